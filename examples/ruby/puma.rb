# puma settings for handoff (Debian's puma 5.6: `puma -C puma.rb`, config.ru).
#
# Sockets: puma takes the inherited sockets itself when LISTEN_PID is its own
# pid and LISTEN_FDS is set (systemd socket activation, what the agent
# passes). "only" drops every other bind, so the `port` line is used only when
# puma runs by hand, without the agent.
bind_to_activated_sockets "only"
port ENV.fetch("PORT", "9292"), "127.0.0.1"

# One puma process per agent worker: the agent runs the processes (workers =
# N in deploy.toml) and replaces them on a deploy; puma's cluster mode would
# only add a second layer of forking.
workers 0
threads 4, 4

# Readiness: `notify`. puma sends READY=1 once booted when NOTIFY_SOCKET is
# set and the sd_notify gem is installed (Debian: ruby-sd-notify). `listen`
# does not work: puma's accept loop waits in select(), which leaves no trace
# in /proc/<pid>/fdinfo (its epoll set, nio4r's, holds client sockets only).

# Graceful stop: see handoff_grace.rb (used from config.ru). Exit 0 after a
# graceful stop instead of re-raising SIGTERM.
raise_exception_on_sigterm false
