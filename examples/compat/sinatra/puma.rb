# puma's documented systemd socket activation: serve on the sockets passed
# in LISTEN_FDS and bind nothing else. Everything else is puma's default
# (single mode, its default threads, its default stop on SIGTERM).
bind_to_activated_sockets "only"
