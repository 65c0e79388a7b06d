#!/bin/sh
# Entrypoint of warden-haproxy:local: HAProxy started with the config the Warden agent writes.
#
# 1. wait until the agent has written $WARDEN_HAPROXY_CONFIG (the agent never starts or stops
#    this HAProxy: balancer.external in its config);
# 2. run `haproxy -W -db -f CONFIG` in the foreground as PID 1 (exec), so `docker stop` reaches it;
# 3. a watcher sends the master SIGUSR2 (a seamless reload) when the agent rewrites the file,
#    e.g. after a change of balancer.slots; the agent waits for the new worker's socket.
set -eu
CONFIG=${WARDEN_HAPROXY_CONFIG:-/var/lib/warden/lb/haproxy.cfg}
echo "warden-haproxy: waiting for $CONFIG (written by the Warden agent)"
until [ -s "$CONFIG" ]; do sleep 0.2; done
echo "warden-haproxy: starting with $CONFIG"
(
  last=$(cksum <"$CONFIG")
  while sleep 1; do
    now=$(cksum <"$CONFIG" 2>/dev/null) || continue
    if [ "$now" != "$last" ]; then
      last=$now
      echo "warden-haproxy: $CONFIG changed; reloading"
      kill -USR2 $$ || exit 0
    fi
  done
) &
exec haproxy -W -db -f "$CONFIG"
