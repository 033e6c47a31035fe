# Sinatra's classic style, served by puma at its own stop (config.ru, puma.rb).
require "sinatra"

release = ENV.fetch("DEPLOY_RELEASE_ID", "dev")

get "/" do
  content_type "text/plain"
  "hello from #{release}\n"
end
