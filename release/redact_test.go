package release

import "testing"

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://u:p4ss@h/x.tgz", "https://u:xxxxx@h/x.tgz"},
		{"https://ghp_token@h/x.tgz", "https://xxxxx@h/x.tgz"},
		{"https://h/x.tgz?checksum=sha256:ab&X-Amz-Signature=s1g&X-Amz-Credential=c", "https://h/x.tgz?checksum=sha256:ab&X-Amz-Signature=xxxxx&X-Amz-Credential=xxxxx"},
		{"https://h/x.tgz?access_token=t&v=1", "https://h/x.tgz?access_token=xxxxx&v=1"},
		{"s3::https://k:s@h/b/x.tgz", "s3::https://k:xxxxx@h/b/x.tgz"},
		{"/srv/app.tgz", "/srv/app.tgz"},
		{"file:///srv/my app.tgz?archive=tgz", "file:///srv/my app.tgz?archive=tgz"},
		{"https://u:p@h/%zz", "https://xxxxx@h/%zz"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
