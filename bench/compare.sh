#!/usr/bin/env bash
# Side-by-side benchmark: redisse against Nchan, same machine, same run, same load generator.
#
#   bench/compare.sh                 # every scenario at full scale (several minutes)
#   bench/compare.sh --quick         # small and short: checks that everything works
#   bench/compare.sh --only "fanout routing" --servers "redisse-mem nchan-mem"
#   bench/compare.sh --baseline main --servers "redisse-mem base-mem redisse-redis base-redis"
#   bench/compare.sh --cluster       # publish on memory, one Redis, Redis Cluster of 1 and 3 primaries
#
# It installs Nchan if missing and asked for (Debian: libnginx-mod-nchan nginx), builds redisse
# (the `profiling` profile: the release build with line tables and symbols, so that perf can be
# pointed at the servers it runs) and redisse-load (the workspace member bench/load, release
# mode), starts a private
# redis-server on a free port (never the machine's 6379), then for each scenario and each server
# starts the server fresh (so memory figures start from a clean process), runs redisse-load
# against it, and stops it. The RESULT lines go to $OUT (default
# /tmp/redisse-bench/results-<time>.txt); a summary with ratios (redisse / Nchan, and redisse's
# Redis broker / its in-memory broker) is printed at the end. Everything listens on 127.0.0.1
# only; every step has a time limit.
#
# storm cuts every stream at once (the load generator drops its sockets) while events flow, and
# every subscriber comes back at once with Last-Event-ID; storm-restart is the deploy instead:
# at the cut, redisse-load runs $WORK/restart.sh (written by start_server for the server under
# test), which stops the server with SIGTERM, starts it again with the same command and prints
# the new process id. Only the servers on Redis keep their history across a restart, so
# storm-restart runs on redisse-redis, base-redis and nchan-redis only.
#
# --baseline REV measures an older redisse in the same run: it checks REV out in a detached git
# worktree ($BASE_SRC, default /tmp/redisse-baseline-src), builds its `redisse` binary there
# (its `profiling` profile, or release mode for a commit from before that profile; target dir
# $BASE_TARGET, default /tmp/redisse-baseline-target; kept and reused while it was built from
# the same commit) and adds the servers base-mem and base-redis, which run that
# binary exactly as redisse-mem and redisse-redis run the current one (same flags, same port).
# Without --servers, they are added to the default list. The summary then also gives
# current / baseline (mem/base = redisse-mem / base-mem, rds/base = redisse-redis / base-redis).
#
# redisse-cluster1 and redisse-cluster3 run redisse with --redis-cluster on a Redis Cluster that
# the script makes for that one run (on free loopback ports whose bus port, +10000, is free too;
# one primary holding every slot, or three primaries made by redis-cli --cluster create; no
# replicas, as the single Redis has none) and stops after it. Their redis CPU is the sum over the
# cluster's processes, from /proc/<pid>/stat before and after (redisse-load --broker-pid, once
# per node). --cluster is short for --only publish --servers "redisse-mem redisse-redis
# redisse-cluster1 redisse-cluster3" (a later --only or --servers still wins); the summary gives
# cl1/rds and cl3/rds.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS="idle fanout saturated routing publish storm storm-restart"
SERVERS="redisse-mem redisse-redis redisse-redis-direct nchan-mem nchan-redis"
SERVERS_GIVEN=0
ONLY_GIVEN=0
BASELINE=""
BASE_SRC=${BASE_SRC:-/tmp/redisse-baseline-src}
BASE_TARGET=${BASE_TARGET:-/tmp/redisse-baseline-target}
QUICK=0
WORK=/tmp/redisse-bench
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --cluster)
      [[ $SERVERS_GIVEN == 1 ]] || SERVERS="redisse-mem redisse-redis redisse-cluster1 redisse-cluster3"
      [[ $ONLY_GIVEN == 1 ]] || SCENARIOS="publish"
      SERVERS_GIVEN=1 ;;
    --only) SCENARIOS="$2"; ONLY_GIVEN=1; shift ;;
    --servers) SERVERS="$2"; SERVERS_GIVEN=1; shift ;;
    --baseline) BASELINE="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --summary) SUMMARY_ONLY="$2"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

[[ -n $BASELINE && $SERVERS_GIVEN == 0 ]] && SERVERS="$SERVERS base-mem base-redis"
for server in $SERVERS; do
  case $server in
    redisse-mem|redisse-redis|redisse-redis-direct|redisse-cluster1|redisse-cluster3|nchan-mem|nchan-redis) ;;
    base-mem|base-redis)
      [[ -n $BASELINE ]] || { echo "compare: $server needs --baseline REV" >&2; exit 2; } ;;
    *) echo "compare: unknown server $server" >&2; exit 2 ;;
  esac
done
if [[ -n $BASELINE ]]; then
  BASE_COMMIT=$(git rev-parse --verify --quiet "$BASELINE^{commit}") \
    || { echo "compare: --baseline $BASELINE is not a commit here" >&2; exit 2; }
fi

REDISSE_PORT=18190
NCHAN_MEM_PORT=18180
NCHAN_REDIS_PORT=18181

# Load shape per scenario: full scale, or --quick.
scenario_args() {
  local s=$1
  if [[ $QUICK == 1 ]]; then
    case $s in
      idle) echo "--scenario idle --subscribers 500 --settle 2" ;;
      fanout) echo "--scenario fanout --subscribers 300 --events 20 --rate 10 --settle 1" ;;
      saturated) echo "--scenario saturated --subscribers 200 --events 500 --settle 1" ;;
      routing) echo "--scenario routing --subscribers 300 --events 1000 --rate 500 --settle 1" ;;
      publish) echo "--scenario publish --events 2000 --settle 0" ;;
      storm) echo "--scenario storm --subscribers 300 --channels 10 --rate 50 --cut-after 1 --after-live 1 --storm-timeout 20 --settle 1" ;;
      storm-restart) echo "$(scenario_args storm) --restart-command $WORK/restart.sh" ;;
    esac
  else
    case $s in
      idle) echo "--scenario idle --subscribers 19000 --settle 5" ;;
      fanout) echo "--scenario fanout --subscribers 10000 --events 100 --rate 10 --settle 2" ;;
      saturated) echo "--scenario saturated --subscribers 2000 --events 2000 --settle 2" ;;
      routing) echo "--scenario routing --subscribers 10000 --events 20000 --rate 2000 --settle 3" ;;
      publish) echo "--scenario publish --events 20000 --settle 0" ;;
      storm) echo "--scenario storm --subscribers 10000 --channels 40 --rate 200 --cut-after 3 --after-live 3 --settle 2" ;;
      storm-restart) echo "$(scenario_args storm) --restart-command $WORK/restart.sh" ;;
    esac
  fi
}

summary() {
  local file=$1
  awk '
    /^RESULT / {
      delete kv
      for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
      key = kv["scenario"] SUBSEP kv["label"]
      for (k in kv) r[key, k] = kv[k]
      seen[kv["scenario"]] = 1
      labelseen[kv["label"]] = 1
    }
    /^# baseline / { baseline = substr($0, 3) }
    function get(s, l, k) { return ((s, l, k) in r) ? r[s, l, k] : "" }
    function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
    function row(s, metric, title,    j, v, line) {
      line = sprintf("  %-26s", title)
      for (j = 1; j <= nl; j++) { v = get(s, labels[j], metric); line = line sprintf(" %14s", v == "" ? "-" : v) }
      line = line "  "
      for (j = 1; j <= nq; j++) line = line sprintf(" %8s", ratio(get(s, qnum[j], metric), get(s, qden[j], metric)))
      print line
    }
    END {
      # Columns: the servers that have results, in this order; ratios: those whose two servers do.
      nall = split("redisse-mem base-mem redisse-redis base-redis redisse-redis-direct redisse-cluster1 redisse-cluster3 nchan-mem nchan-redis", all, " ")
      nl = 0
      for (j = 1; j <= nall; j++) if (all[j] in labelseen) labels[++nl] = all[j]
      nspec = split("redisse-mem/nchan-mem/r/n mem,redisse-redis/nchan-redis/r/n rds,redisse-redis/redisse-mem/rds/mem,redisse-mem/base-mem/mem/base,redisse-redis/base-redis/rds/base,redisse-cluster1/redisse-redis/cl1/rds,redisse-cluster3/redisse-redis/cl3/rds", specs, ",")
      nq = 0
      for (j = 1; j <= nspec; j++) {
        split(specs[j], f, "/")
        if (!(f[1] in labelseen) || !(f[2] in labelseen)) continue
        nq++; qnum[nq] = f[1]; qden[nq] = f[2]; qtitle[nq] = f[3] "/" f[4]
      }
      hdr = sprintf("  %-26s", "")
      for (j = 1; j <= nl; j++) hdr = hdr sprintf(" %14s", labels[j])
      hdr = hdr "  "
      for (j = 1; j <= nq; j++) hdr = hdr sprintf(" %8s", qtitle[j])
      split("idle fanout saturated routing publish storm storm-restart", order, " ")
      for (o = 1; o <= 7; o++) {
        s = order[o]
        if (!(s in seen)) continue
        print ""; print "== " s; print hdr
        if (s == "idle") { row(s, "held", "connections held"); row(s, "rss_kib_per_conn", "RSS KiB / connection"); row(s, "pss_kib_per_conn", "PSS KiB / connection"); continue }
        if (s == "storm" || s == "storm-restart") {
          row(s, "at_cut", "streams cut"); row(s, "live_again", "live again"); row(s, "storm_s", "cut -> all live s")
          if (s == "storm-restart") { row(s, "restart_s", "restart command s"); row(s, "publish_errors", "publishes refused") }
          row(s, "back_p50_ms", "back (head) p50 ms"); row(s, "back_p99_ms", "back (head) p99 ms")
          row(s, "live_p50_ms", "live p50 ms"); row(s, "live_p99_ms", "live p99 ms"); row(s, "live_max_ms", "live max ms")
          row(s, "lost", "events lost"); row(s, "duplicates", "duplicates"); row(s, "missed_events", "missedevents received")
          row(s, "failed_attempts", "failed reconnect attempts"); row(s, "listen_overflows", "listen queue overflows")
          row(s, "expected", "deliveries expected"); row(s, "delivered", "deliveries received")
          row(s, "rss_at_cut_mib", "server RSS at cut MiB"); row(s, "rss_peak_mib", "server RSS peak MiB")
          row(s, "storm_server_cpu_s", "server CPU s, cut -> live"); row(s, "storm_client_cpu_s", "client CPU s, cut -> live")
          row(s, "steady_server_cpu_pct", "server CPU % before cut")
          continue
        }
        row(s, "held", "connections held")
        if (s != "publish") {
          row(s, "expected", "deliveries expected"); row(s, "delivered", "deliveries received")
          row(s, "out_of_order", "out of order / duplicate")
          row(s, "p50_ms", "latency p50 ms"); row(s, "p99_ms", "latency p99 ms")
          row(s, "p999_ms", "latency p99.9 ms"); row(s, "max_ms", "latency max ms")
          row(s, "deliveries_per_s", "deliveries / s")
          row(s, "server_us_per_delivery", "server CPU us / delivery")
        }
        row(s, "publish_per_s", "publishes / s")
        row(s, "server_us_per_event", "server CPU us / event")
        row(s, "broker_us_per_event", "redis CPU us / event")
        row(s, "server_broker_us_per_event", "+ redis CPU us / event")
        row(s, "server_kernel_pct", "server CPU in kernel %")
        row(s, "server_sleeps_per_event", "server sleeps / event")
        row(s, "broker_sleeps_per_event", "redis sleeps / event")
        row(s, "client_us_per_delivery", "client CPU us / delivery")
      }
      print ""
      for (j = 1; j <= nq; j++) printf "  %-8s = %s / %s\n", qtitle[j], qnum[j], qden[j]
      if (nq > 0) print "  (for each ratio, lower is better on every row but held, deliveries and publishes/s)"
      if (baseline != "") print "  " baseline
    }' "$file"
}

if [[ -n ${SUMMARY_ONLY:-} ]]; then
  summary "$SUMMARY_ONLY"
  exit 0
fi

NCHAN=0
[[ " $SERVERS " == *" nchan-"* ]] && NCHAN=1
if [[ $NCHAN == 1 ]] && { ! [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]] || ! command -v nginx >/dev/null; }; then
  echo "compare: installing Nchan (libnginx-mod-nchan, nginx)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq libnginx-mod-nchan nginx >/dev/null
fi
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }

mkdir -p "$WORK/bin" "$WORK/nchan" "$WORK/redis"
OUT=${OUT:-$WORK/results-$(date +%Y%m%d-%H%M%S).txt}
echo "compare: building (profiling profile, release)"
cargo build --profile profiling -q --bin redisse
cargo build --release -q -p redisse-load
# Copies, so that another build during the run does not change what is measured.
cp target/profiling/redisse target/release/redisse-load "$WORK/bin/"
LOAD=$WORK/bin/redisse-load

# --baseline: REV's redisse, built in its own detached worktree and target dir.
if [[ -n $BASELINE ]]; then
  if [[ -e $BASE_SRC ]]; then
    # Only a clean checkout of this repository, moved to the commit if needed.
    if [[ $(git -C "$BASE_SRC" rev-parse --show-toplevel 2>/dev/null) != "$BASE_SRC" ]] \
      || ! git -C "$BASE_SRC" cat-file -e "$BASE_COMMIT" 2>/dev/null \
      || [[ -n $(git -C "$BASE_SRC" status --porcelain --untracked-files=no) ]]; then
      echo "compare: $BASE_SRC is not a clean worktree of this repository; remove it or set BASE_SRC" >&2
      exit 1
    fi
    [[ $(git -C "$BASE_SRC" rev-parse HEAD) == "$BASE_COMMIT" ]] \
      || git -C "$BASE_SRC" checkout -q --detach "$BASE_COMMIT"
  else
    git worktree prune
    git worktree add -q --detach "$BASE_SRC" "$BASE_COMMIT"
  fi
  # The profiling profile where the commit has one; before it, release kept the line tables.
  BASE_PROFILE=release
  grep -q '^\[profile\.profiling\]' "$BASE_SRC/Cargo.toml" && BASE_PROFILE=profiling
  BASE_STAMP=$BASE_TARGET/$BASE_PROFILE/redisse.commit
  if [[ -x $BASE_TARGET/$BASE_PROFILE/redisse && $(cat "$BASE_STAMP" 2>/dev/null) == "$BASE_COMMIT" ]]; then
    echo "compare: baseline ${BASE_COMMIT:0:7} already built in $BASE_TARGET"
  else
    echo "compare: building baseline ${BASE_COMMIT:0:7} ($BASE_PROFILE) in $BASE_SRC"
    rm -f "$BASE_STAMP"
    (cd "$BASE_SRC" && CARGO_TARGET_DIR=$BASE_TARGET cargo build --profile "$BASE_PROFILE" -q --bin redisse)
    echo "$BASE_COMMIT" >"$BASE_STAMP"
  fi
  cp "$BASE_TARGET/$BASE_PROFILE/redisse" "$WORK/bin/redisse-base"
fi

free_port() {
  local p=$1
  while (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null || [[ $p == 6379 ]]; do p=$((p + 1)); done
  echo "$p"
}
wait_port() {
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
  echo "compare: nothing listens on port $1" >&2; return 1
}
stop_pid() {
  local pid=$1 sig=${2:-TERM}
  kill -"$sig" "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# A port for a Redis Cluster node: nothing listens on it or on its cluster bus port (+10000), and
# this run's cluster did not take it already. From 21000 up, so that the bus port stays below the
# kernel's ephemeral range (32768 up by default), where a client connection's local port can
# take it at any time.
free_cluster_port() {
  local p=$1
  while (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null || (echo >/dev/tcp/127.0.0.1/$((p + 10000))) 2>/dev/null \
    || [[ " $CLUSTER_PORTS " == *" $p "* || $p == 6379 ]]; do p=$((p + 1)); done
  echo "$p"
}

# Makes a Redis Cluster of $1 primaries (no replicas) in $WORK/cluster; sets CLUSTER_PIDS,
# CLUSTER_PORTS and CLUSTER_SEEDS (the nodes' URLs, comma-separated, for --redis-cluster).
CLUSTER_PIDS=()
CLUSTER_PORTS=""
CLUSTER_SEEDS=""
start_cluster() {
  local n=$1 p=21000 addrs=() seeds=() port tries dir
  rm -rf "$WORK/cluster"
  mkdir -p "$WORK/cluster"
  for _ in $(seq "$n"); do
    # A port taken between the check and the bind (the node then exits): the next one.
    for tries in $(seq 10); do
      p=$(free_cluster_port "$p")
      dir=$WORK/cluster/$p
      mkdir -p "$dir"
      redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes --cluster-node-timeout 5000 \
        --save '' --appendonly no --daemonize yes --dir "$dir" \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
      for _ in $(seq 50); do
        [[ -s $dir/redis.pid ]] && (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && break
        grep -q 'aborting' "$dir/redis.log" 2>/dev/null && break
        sleep 0.1
      done
      [[ -s $dir/redis.pid ]] && (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && break
      if ! grep -q 'Address already in use' "$dir/redis.log" 2>/dev/null || [[ $tries == 10 ]]; then
        echo "compare: a cluster node did not start on $p:" >&2
        tail -5 "$dir/redis.log" >&2
        return 1
      fi
      p=$((p + 1))
    done
    CLUSTER_PIDS+=("$(cat "$dir/redis.pid")")
    CLUSTER_PORTS="$CLUSTER_PORTS $p"
    addrs+=("127.0.0.1:$p")
    seeds+=("redis://127.0.0.1:$p/")
    p=$((p + 1))
  done
  if [[ $n == 1 ]]; then
    # redis-cli --cluster create wants three primaries at least: one node takes every slot.
    redis-cli -p "${CLUSTER_PORTS# }" cluster addslotsrange 0 16383 >/dev/null
  elif ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
    >"$WORK/cluster/create.log" 2>&1; then
    echo "compare: redis-cli --cluster create failed:" >&2
    cat "$WORK/cluster/create.log" >&2
    return 1
  fi
  for port in $CLUSTER_PORTS; do
    for _ in $(seq 300); do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && continue 2
      sleep 0.1
    done
    echo "compare: cluster node $port is not ok after 30 s" >&2
    return 1
  done
  CLUSTER_SEEDS=$(IFS=,; echo "${seeds[*]}")
  echo "compare: Redis Cluster of $n on$CLUSTER_PORTS"
}
stop_cluster() {
  local pid
  for pid in "${CLUSTER_PIDS[@]}"; do stop_pid "$pid"; done
  CLUSTER_PIDS=()
  CLUSTER_PORTS=""
  CLUSTER_SEEDS=""
}

REDIS_PORT=$(free_port 17379)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
  --pidfile "$WORK/redis/redis.pid" --logfile "$WORK/redis/redis.log" --dir "$WORK/redis"
wait_port "$REDIS_PORT"
REDIS_PID=$(cat "$WORK/redis/redis.pid")
SERVER_PID=""
cleanup() {
  [[ -n $SERVER_PID ]] && stop_pid "$SERVER_PID"
  stop_cluster
  stop_pid "$REDIS_PID"
}
trap cleanup EXIT
echo "compare: private redis-server on 127.0.0.1:$REDIS_PORT"

for p in $REDISSE_PORT $((REDISSE_PORT + 1)) $NCHAN_MEM_PORT $NCHAN_REDIS_PORT; do
  if (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "compare: port $p is busy" >&2; exit 1; fi
done

if [[ $NCHAN == 1 ]]; then
  sed -e "s#@DIR@#$WORK/nchan#g; s/@MEM_PORT@/$NCHAN_MEM_PORT/; s/@REDIS_STORE_PORT@/$NCHAN_REDIS_PORT/; s/@REDIS_PORT@/$REDIS_PORT/" \
    bench/nchan.conf.in > "$WORK/nchan/nchan.conf"
  nginx -t -q -p "$WORK/nchan" -c "$WORK/nchan/nchan.conf" -e "$WORK/nchan/error.log"
fi

# A process that exists and is not a zombie (a server that compare.sh has not reaped yet).
alive() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# Writes $WORK/restart.sh for storm-restart: it stops the server whose id is in
# $WORK/server.pid (SIGTERM, as a deploy does), starts it again with the same command, waits for
# its port, and prints the new process id (redisse-load measures that one from then on).
write_restart() {
  local start=$1 pidcmd=$2
  cat >"$WORK/restart.sh" <<EOF
#!/usr/bin/env bash
set -u
$(declare -f alive)
old=\$(cat "$WORK/server.pid")
kill -TERM "\$old" 2>/dev/null
for _ in \$(seq 300); do alive "\$old" || break; sleep 0.05; done
alive "\$old" && kill -KILL "\$old"
$start
$pidcmd >"$WORK/server.pid"
for _ in \$(seq 200); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
cat "$WORK/server.pid"
EOF
  chmod +x "$WORK/restart.sh"
  echo "$SERVER_PID" >"$WORK/server.pid"
}

# Starts one server (and, for redisse-cluster*, its cluster); sets SERVER_PID, PORT, EXTRA (more
# redisse-load options) and BROKER (the --broker-pid options: the Redis processes it uses).
start_server() {
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  EXTRA=""
  BROKER="--broker-pid $REDIS_PID"
  case $1 in
    redisse-mem|redisse-redis|redisse-redis-direct|redisse-cluster1|redisse-cluster3|base-mem|base-redis)
      # base-* is the --baseline binary, run exactly as the current one.
      local bin=redisse redis=()
      [[ $1 == base-* ]] && bin=redisse-base
      [[ $1 != redisse-mem && $1 != base-mem ]] && redis=(--redis "redis://127.0.0.1:$REDIS_PORT/")
      if [[ $1 == redisse-cluster* ]]; then
        "$WORK/bin/redisse" --help | grep -q -- --redis-cluster \
          || { echo "compare: this redisse has no --redis-cluster" >&2; return 1; }
        start_cluster "${1#redisse-cluster}"
        redis=(--redis-cluster "$CLUSTER_SEEDS")
        BROKER=$(printf -- '--broker-pid %s ' "${CLUSTER_PIDS[@]}")
      fi
      # A redisse with an internal listener publishes there (its public port needs a
      # credential); an older one publishes on its public port (loopback was enough).
      local internal=()
      EXTRA="--target redisse"
      if "$WORK/bin/$bin" --help | grep -q -- --internal-address; then
        internal=(--internal-address "127.0.0.1:$((REDISSE_PORT + 1))")
        EXTRA="$EXTRA --publish-server 127.0.0.1:$((REDISSE_PORT + 1))"
      fi
      local cmd=("$WORK/bin/$bin" -a 127.0.0.1 -p $REDISSE_PORT "${internal[@]}" "${redis[@]}")
      "${cmd[@]}" >"$WORK/$bin.log" 2>&1 &
      SERVER_PID=$!
      PORT=$REDISSE_PORT
      write_restart "setsid $(printf '%q ' "${cmd[@]}") >>$WORK/$bin.log 2>&1 </dev/null & echo \$! >$WORK/new.pid" "cat $WORK/new.pid"
      [[ $1 == redisse-redis-direct ]] && EXTRA="$EXTRA --publish-redis redis://127.0.0.1:$REDIS_PORT/"
      ;;
    nchan-mem|nchan-redis)
      rm -f "$WORK/nchan/nginx.pid"
      nginx -p "$WORK/nchan" -c "$WORK/nchan/nchan.conf" -e "$WORK/nchan/error.log"
      for _ in $(seq 50); do [[ -s $WORK/nchan/nginx.pid ]] && break; sleep 0.1; done
      SERVER_PID=$(cat "$WORK/nchan/nginx.pid")
      PORT=$NCHAN_MEM_PORT
      [[ $1 == nchan-redis ]] && PORT=$NCHAN_REDIS_PORT
      EXTRA="--target nchan"
      write_restart "rm -f $WORK/nchan/nginx.pid; nginx -p $WORK/nchan -c $WORK/nchan/nchan.conf -e $WORK/nchan/error.log; for _ in \$(seq 50); do [[ -s $WORK/nchan/nginx.pid ]] && break; sleep 0.1; done" "cat $WORK/nchan/nginx.pid"
      ;;
  esac
  wait_port "$PORT" || return 1
  sleep 0.5
}

SOFTWARE="redisse $(git rev-parse --short HEAD)$(git diff --quiet -- src || echo '+changes')"
[[ $NCHAN == 1 ]] && SOFTWARE="$SOFTWARE; $(nginx -v 2>&1); nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null)"
SOFTWARE="$SOFTWARE; $(redis-server --version | cut -d' ' -f3)"
{
  echo "# redisse vs Nchan, $(date -u +%FT%TZ), quick=$QUICK"
  echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r), nofile $(ulimit -n)"
  echo "# $SOFTWARE"
  [[ -z $BASELINE ]] || echo "# baseline base-* = redisse ${BASE_COMMIT:0:7} (--baseline $BASELINE)"
} | tee "$OUT"

for scenario in $SCENARIOS; do
  for server in $SERVERS; do
    # Publishing straight to Redis only makes sense where there is publishing.
    [[ $server == redisse-redis-direct && ( $scenario == idle || $scenario == publish ) ]] && continue
    # A restart keeps history only in Redis; the direct publisher would not see the restart.
    [[ $scenario == storm-restart && $server != *-redis ]] && continue
    echo "compare: $scenario on $server"
    if ! start_server "$server"; then
      echo "compare: $server did not start; skipped"
      [[ -n $SERVER_PID ]] && stop_pid "$SERVER_PID"
      SERVER_PID=""
      stop_cluster
      continue
    fi
    # shellcheck disable=SC2046,SC2086
    timeout 300 "$LOAD" $EXTRA --server "127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
      $BROKER --label "$server" $(scenario_args "$scenario") --max-time 240 \
      >"$WORK/last-run.txt" 2>&1 || echo "compare: redisse-load failed ($?)"
    grep '^RESULT' "$WORK/last-run.txt" | tee -a "$OUT" || tail -5 "$WORK/last-run.txt"
    # storm-restart started another server process.
    [[ $scenario == storm-restart ]] && SERVER_PID=$(cat "$WORK/server.pid")
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    stop_cluster
    sleep 1
  done
done

echo
echo "compare: results in $OUT"
summary "$OUT"
