# Keep-alive-safe graceful stop for puma (Debian bookworm's puma 5.6) under
# handoff. `use HandoffGrace` in config.ru.
#
# On SIGTERM puma stops accepting, then at once closes every idle keep-alive
# connection, so a client that sends its next request at that moment gets an
# EOF or a reset ("stale keep-alive"). With this file:
#   1. from the signal on, every response says `Connection: close`, so each
#      client closes its connection after its next answer;
#   2. puma stops accepting, as before;
#   3. for GRACE seconds after that, puma keeps serving the connections it
#      has (still with `Connection: close`);
#   4. then puma's own shutdown runs: connections still idle are closed,
#      requests in flight finish.
# Step 1 starts at the signal, not when the accept loop ends, because that
# loop may not end by itself: with as many busy keep-alive clients as pool
# threads (`threads 4, 4`), puma's accept thread, woken by a connection that
# the next generation then takes, waits for a free pool thread and reads the
# stop command only after one frees up. A pool thread frees up when its
# client leaves, and a client that never pauses leaves only when told to.
# HANDOFF_EXAMPLE_SHUTDOWN=default leaves puma's behaviour untouched (the
# middleware then does nothing), for comparison.
class HandoffGrace
  GRACE = Float(ENV.fetch('HANDOFF_IDLE_GRACE_MS', '1000')) / 1000 # seconds

  @stopping = false # responses say Connection: close
  @graced = false    # the grace after the accept loop has been given
  class << self
    attr_accessor :stopping, :graced
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

  # puma's SIGTERM trap calls Launcher#graceful_stop.
  module SignalHook
    def graceful_stop
      HandoffGrace.stopping = true
      super
    end
  end

  # Puma fires the :state event with :stop from its server thread right after
  # its accept loop has ended and before it shuts its reactor down (where the
  # idle connections are closed): the grace goes there.
  module StopHook
    def fire(hook, *args)
      if hook == :state && args.first == :stop && !HandoffGrace.graced
        HandoffGrace.stopping = true
        HandoffGrace.graced = true
        $stderr.puts "handoff-grace: stopping, serving idle connections #{GRACE}s more with Connection: close"
        sleep GRACE
      end
      super
    end
  end

  if defined?(Puma::Launcher) && defined?(Puma::Events) && ENV["HANDOFF_EXAMPLE_SHUTDOWN"] != "default"
    Puma::Launcher.prepend(SignalHook)
    Puma::Events.prepend(StopHook)
  end
end
