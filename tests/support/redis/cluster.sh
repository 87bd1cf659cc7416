#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback for the tests: 6 nodes, 3 masters each with a replica,
# made with `redis-server --cluster-enabled yes` and `redis-cli --cluster create`.
#
#   cluster.sh up DIR [--tls] [--acl] [--node-timeout MS]
#       Starts the nodes (daemonized, files in DIR/nodeN), creates the cluster and waits until it
#       is whole: cluster_state:ok on every node, every replica's link up, every node seeing all
#       three replicas. Prints the data ports on one line; writes DIR/env.
#       --tls   TLS only (no plain port), also on the cluster bus and for replication; certificates
#               from DIR/pki (made with tests/support/pki.sh when missing). Clients: rediss://, CA
#               DIR/pki/ca.crt.
#       --acl   default user off; user "router", password in DIR/password; replicas authenticate
#               with it too.
#       --node-timeout MS  cluster-node-timeout (default 2000; Redis' own default is 15000).
#       EXTRA_REDIS_ARGS: more redis-server options for every node.
#       Every node runs with cluster-require-full-coverage no: a failed master stops only its
#       own slots, not the whole cluster (the setting the README recommends).
#   cluster.sh down DIR          stops every node (SIGTERM, then SIGKILL) and removes DIR/node*.
#   cluster.sh failover DIR [sigkill|sigstop]
#       Kills (or freezes: a hung node, TCP still accepted) the master of slot 0 and waits for its
#       replica's promotion. Prints `victim=PORT replica=PORT promoted_ms=N` (the time from the
#       kill to the replica reporting role master). A frozen node stays frozen until `resume`.
#   cluster.sh resume DIR        SIGCONT to every node (after a sigstop failover).
#   cluster.sh restart DIR N     starts node N (1-6) again; a former master rejoins as a replica.
#   cluster.sh cli DIR [N] ARGS  redis-cli on node N (default 1) with the right TLS and ACL flags.
#
# Data port of node i: BASE + i - 1, from a free block in 21000-28999; its bus port is data port
# + 100 (not the default +10000, which can land in the kernel's ephemeral port range).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
N=6
USER_NAME=router

now_ms() { date +%s%3N; }

# Free when nothing accepts a connection there (bash's /dev/tcp; no ss or netstat needed).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

find_base() {
  local tries=0 base ok p
  while ((tries++ < 100)); do
    base=$((21000 + (RANDOM % 79) * 100))
    ok=1
    for ((p = base; p < base + N; p++)); do
      if ! port_free "$p" || ! port_free $((p + 100)); then ok=0; break; fi
    done
    ((ok)) && { echo "$base"; return; }
  done
  echo "cluster.sh: no free block of ports" >&2
  exit 1
}

load_env() {
  [[ -f $1/env ]] || { echo "cluster.sh: $1/env missing (cluster not up?)" >&2; exit 1; }
  # shellcheck disable=SC1091
  source "$1/env"
}

cli_flags() {
  local flags=()
  if [[ $TLS == 1 ]]; then
    flags+=(--tls --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/client.crt" --key "$DIR/pki/client.key")
  fi
  if [[ $ACL == 1 ]]; then flags+=(--user "$USER_NAME" --pass "$(cat "$DIR/password")" --no-auth-warning); fi
  echo "${flags[@]}"
}

rcli() { # PORT ARGS...
  local port=$1
  shift
  # shellcheck disable=SC2046
  timeout 5 redis-cli $(cli_flags) -h 127.0.0.1 -p "$port" "$@"
}

node_pid() { cat "$DIR/node$1/pid" 2>/dev/null || true; }

start_node() { # i (1-based)
  local i=$1 port=$((BASE + $1 - 1)) d="$DIR/node$1" args
  mkdir -p "$d"
  args=(--bind 127.0.0.1 --dir "$d" --daemonize yes --pidfile "$d/pid" --logfile "$d/log"
    --cluster-enabled yes --cluster-config-file "$d/nodes.conf" --cluster-port $((port + 100))
    --cluster-node-timeout "$NODE_TIMEOUT" --cluster-require-full-coverage no
    --save "" --appendonly no --protected-mode no
    # Replicas sync at once (Redis 7 waits 5 s): a replica that never synced will not fail over.
    --repl-diskless-sync-delay 0)
  if [[ $TLS == 1 ]]; then
    args+=(--port 0 --tls-port "$port" --tls-cluster yes --tls-replication yes
      --tls-cert-file "$DIR/pki/server.crt" --tls-key-file "$DIR/pki/server.key"
      --tls-ca-cert-file "$DIR/pki/ca.crt" --tls-auth-clients optional)
  else
    args+=(--port "$port")
  fi
  if [[ $ACL == 1 ]]; then
    printf 'user default off\nuser %s on >%s ~* &* +@all\n' "$USER_NAME" "$(cat "$DIR/password")" >"$d/users.acl"
    args+=(--aclfile "$d/users.acl" --masteruser "$USER_NAME" --masterauth "$(cat "$DIR/password")")
  fi
  # shellcheck disable=SC2206
  args+=(${EXTRA_REDIS_ARGS:-})
  rm -f "$d/pid"
  redis-server "${args[@]}"
}

alive() { local pid; pid=$(node_pid "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

wait_whole() { # TIMEOUT_S
  local deadline=$(($(now_ms) + $1 * 1000)) i p ok
  while :; do
    ok=1
    for ((i = 1; i <= N; i++)); do
      alive "$i" || continue
      p=$((BASE + i - 1))
      rcli "$p" cluster info 2>/dev/null | grep -c 'cluster_state:ok' >/dev/null || { ok=0; break; }
      (($(rcli "$p" cluster nodes 2>/dev/null | awk '$3 ~ /slave/ && $3 !~ /fail/' | wc -l) >= 3)) || { ok=0; break; }
      if rcli "$p" role 2>/dev/null | sed -n 1p | grep -c '^slave$' >/dev/null; then
        rcli "$p" info replication 2>/dev/null | grep -c 'master_link_status:up' >/dev/null || { ok=0; break; }
      fi
    done
    ((ok)) && return 0
    (($(now_ms) > deadline)) && { echo "cluster.sh: cluster not whole after $1 s" >&2; return 1; }
    sleep 0.1
  done
}

cmd_up() {
  DIR=$1
  shift
  TLS=0 ACL=0 NODE_TIMEOUT=2000
  while (($#)); do
    case $1 in
      --tls) TLS=1 ;;
      --acl) ACL=1 ;;
      --node-timeout) NODE_TIMEOUT=$2; shift ;;
      *) echo "cluster.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
  done
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd) # absolute: daemonized servers run in /
  if [[ $TLS == 1 && ! -f $DIR/pki/ca.crt ]]; then "$here/../pki.sh" "$DIR/pki"; fi
  if [[ $ACL == 1 && ! -f $DIR/password ]]; then
    printf 'pw-%s' "$(openssl rand -hex 12)" >"$DIR/password"
  fi
  BASE=$(find_base)
  cat >"$DIR/env" <<ENV
DIR=$DIR
BASE=$BASE
TLS=$TLS
ACL=$ACL
NODE_TIMEOUT=$NODE_TIMEOUT
EXTRA_REDIS_ARGS="${EXTRA_REDIS_ARGS:-}"
ENV
  local i p hosts=()
  for ((i = 1; i <= N; i++)); do start_node "$i"; done
  for ((i = 1; i <= N; i++)); do
    p=$((BASE + i - 1))
    hosts+=("127.0.0.1:$p")
    for _ in $(seq 200); do rcli "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
  # shellcheck disable=SC2046
  redis-cli $(cli_flags) --cluster create "${hosts[@]}" --cluster-replicas 1 --cluster-yes \
    >"$DIR/create.log" 2>&1 || { cat "$DIR/create.log" >&2; exit 1; }
  wait_whole 60
  echo "${hosts[*]}" | sed 's/127.0.0.1://g'
}

cmd_down() {
  DIR=$(cd "$1" && pwd)
  local pids=() d pid
  for d in "$DIR"/node*; do
    [[ -f $d/pid ]] && pids+=("$(cat "$d/pid")")
  done
  for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"/node* "$DIR/env" "$DIR/create.log"
}

cmd_failover() {
  DIR=$(cd "$1" && pwd)
  load_env "$DIR"
  local mode=${2:-sigkill} victim="" replica="" p t0 promoted=""
  victim=$(rcli "$BASE" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && $9 ~ /^0-/ {split($2, a, "[:@]"); print a[2]}')
  [[ -n $victim ]] || { echo "cluster.sh: no master of slot 0" >&2; exit 1; }
  # Ask the replicas themselves: another node's view may lag a gossip round behind.
  for ((p = BASE; p < BASE + N; p++)); do
    if [[ $(rcli "$p" role 2>/dev/null | tr '\n' ' ') == "slave 127.0.0.1 $victim "* ]]; then replica=$p; break; fi
  done
  [[ -n $replica ]] || { echo "cluster.sh: no replica of :$victim" >&2; exit 1; }
  local vpid
  vpid=$(node_pid $((victim - BASE + 1)))
  t0=$(now_ms)
  if [[ $mode == sigstop ]]; then kill -STOP "$vpid"; else kill -KILL "$vpid"; fi
  while (($(now_ms) - t0 < 60000)); do
    if rcli "$replica" role 2>/dev/null | sed -n 1p | grep -c '^master$' >/dev/null; then
      promoted=$(($(now_ms) - t0))
      break
    fi
    sleep 0.05
  done
  [[ -n $promoted ]] || { echo "cluster.sh: :$replica was not promoted within 60 s" >&2; exit 1; }
  echo "victim=$victim replica=$replica promoted_ms=$promoted"
}

cmd_resume() {
  DIR=$(cd "$1" && pwd)
  load_env "$DIR"
  local i pid
  for ((i = 1; i <= N; i++)); do
    pid=$(node_pid "$i")
    [[ -n $pid ]] && kill -CONT "$pid" 2>/dev/null || true
  done
}

cmd_restart() {
  DIR=$(cd "$1" && pwd)
  load_env "$DIR"
  local pid
  pid=$(node_pid "$2")
  [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
  start_node "$2"
  wait_whole 60
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  failover) shift; cmd_failover "$@" ;;
  resume) shift; cmd_resume "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  cli)
    shift
    DIR=$(cd "$1" && pwd); load_env "$DIR"; shift
    node=1
    if [[ ${1:-} =~ ^[1-6]$ ]]; then node=$1; shift; fi
    rcli $((BASE + node - 1)) "$@"
    ;;
  *) sed -n '2,28p' "$0"; exit 2 ;;
esac
