# Keep-alive-safe graceful stop for puma (Debian bookworm's puma 5.6) under
# handoff. `use HandoffGrace` in config.ru.
#
# On SIGTERM puma stops accepting, then at once closes every idle keep-alive
# connection, so a client that sends its next request at that moment gets an
# EOF or a reset ("stale keep-alive"). With this file:
#   1. puma stops accepting, as before;
#   2. for GRACE seconds after that, puma keeps serving the connections it
#      has, and every response says `Connection: close`, so each client
#      closes its connection after its next answer;
#   3. then puma's own shutdown runs: connections still idle are closed,
#      requests in flight finish.
# HANDOFF_EXAMPLE_SHUTDOWN=default leaves puma's behaviour untouched (the
# middleware then does nothing), for comparison.
class HandoffGrace
  GRACE = Float(ENV.fetch('HANDOFF_IDLE_GRACE_MS', '1000')) / 1000 # seconds

  @stopping = false
  class << self
    attr_accessor :stopping
  end

  def initialize(app)
    @app = app
  end

  def call(env)
    status, headers, body = @app.call(env)
    if HandoffGrace.stopping
      headers = headers.merge("Connection" => "close")
    end
    [status, headers, body]
  end

  # Puma fires the :state event with :stop from its server thread right after
  # its accept loop has ended and before it shuts its reactor down (where the
  # idle connections are closed): the grace goes there.
  module StopHook
    def fire(hook, *args)
      if hook == :state && args.first == :stop && !HandoffGrace.stopping
        HandoffGrace.stopping = true
        $stderr.puts "handoff-grace: stopping, serving idle connections #{GRACE}s more with Connection: close"
        sleep GRACE
      end
      super
    end
  end

  if defined?(Puma::Events) && ENV["HANDOFF_EXAMPLE_SHUTDOWN"] != "default"
    Puma::Events.prepend(StopHook)
  end
end
