# handoff's Ruby example app (Rack), served by puma: see puma.rb.
# The body names the release that serves: "hello from $DEPLOY_RELEASE_ID\n".
require_relative "handoff_grace"
use HandoffGrace

release = ENV.fetch("DEPLOY_RELEASE_ID", "dev")

run lambda { |_env|
  [200, { "Content-Type" => "text/plain; charset=utf-8" }, ["hello from #{release}\n"]]
}
