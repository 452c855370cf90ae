#!/usr/bin/env bash
# Run one experiment on every host of a Cloud TPU pod slice. Each host runs the same command;
# --multihost makes rl_sharpen.main call jax.distributed.initialize(), which finds the
# coordinator and the process ids from the TPU metadata.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/qwen25_3b_math.py gs://bucket/runs/qwen25 [--config.x=y ...]
#
# Arguments reach the hosts as given, e.g. --config.demo.regimes='("sharpening",)'.
# DRY_RUN=1 prints the script each host would run instead of running it (0 or unset: runs it).
# DETACH=1 starts the run with nohup on every host and returns once it has started, so that closing
# this terminal or losing the ssh connection does not stop it; each host logs to ~/$LOG (default
# rl_sharpen_<date>_<time>.log). Setup (clone, checkout, pip) still runs in the foreground.
# REV: the revision the hosts check out (default: this checkout's HEAD, which must be on a pushed branch);
# a branch or tag name is read here as the commit it names in REPO_URL now, the same for every host.
# FORWARD_ENV: names of local environment variables to set on every host, e.g. FORWARD_ENV="HF_TOKEN
# XLA_FLAGS" (the hosts get no other variable of this shell; a gated model such as Llama needs HF_TOKEN).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_URL=${REPO_URL:-$(git config --get remote.origin.url || true)}
if [ -z "$REPO_URL" ]; then
  echo "tpu_pod.sh: this checkout has no remote 'origin'; set REPO_URL to a repository the hosts can clone" >&2
  exit 2
fi
for flag in DRY_RUN DETACH; do
  if ! [[ "${!flag:-0}" =~ ^[01]$ ]]; then
    echo "tpu_pod.sh: $flag=${!flag}; allowed: 0 or 1" >&2
    exit 2
  fi
done
if [ -z "${REV:-}" ]; then  # this checkout's commit: the hosts can fetch it only from a pushed branch
  REV=$(git rev-parse HEAD)
  if [ -z "$(git branch -r --contains "$REV" 2>/dev/null)" ]; then
    echo "tpu_pod.sh: HEAD ($REV) is on no remote branch (as of the last git fetch), so the hosts cannot check it out;" \
      "push it, or set REV to a pushed revision" >&2
    exit 2
  fi
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "tpu_pod.sh: warning: this checkout has uncommitted changes; the hosts run $REV without them" >&2
  fi
fi
if ! [[ "$REV" =~ ^[0-9a-f]{6,40}$ ]]; then  # a name: a host's own branch of that name may be an old one
  NAME=$REV
  REV=$(git ls-remote "$REPO_URL" "refs/heads/$NAME" "refs/tags/$NAME" 2>/dev/null | awk 'NR == 1 {print $1}')
  if [ -z "$REV" ]; then
    echo "tpu_pod.sh: REV=$NAME is no commit id, nor a branch or tag of $REPO_URL (or it cannot be read)" >&2
    exit 2
  fi
fi
quoted() { printf '%q ' "$@"; }  # each argument quoted for the remote shell
EXPORTS=""
for name in ${FORWARD_ENV:-}; do
  if ! [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!name+set}" ]; then
    echo "tpu_pod.sh: FORWARD_ENV names '$name', which is not a variable set in this shell" >&2
    exit 2
  fi
  EXPORTS+="export $name=$(printf '%q' "${!name}")
"
done
RUN="python3 -m rl_sharpen.main $(quoted --config="$CONFIG" --workdir="$WORKDIR" --multihost "$@")"
if [ "${DETACH:-0}" = 1 ]; then
  LOG=${LOG:-rl_sharpen_$(date +%Y%m%d_%H%M%S).log}
  if ! [[ "$LOG" =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]]; then
    echo "tpu_pod.sh: LOG=$LOG; it must be a file name of letters, digits, '.', '_' and '-', not starting with '.'" >&2
    exit 2
  fi
  RUN="nohup $RUN > ~/$LOG 2>&1 < /dev/null &
echo \"\$(hostname): started, log ~/$LOG\""
fi
REMOTE="set -e
${EXPORTS}if [ ! -d rl_sharpen ]; then git clone $(quoted "$REPO_URL") rl_sharpen; fi
cd rl_sharpen && git fetch -q && git checkout -q $(quoted "$REV")
python3 -m pip install -q -e '.[gcs]' 'jax[tpu]'
$RUN"
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%s\n' "$REMOTE"
  exit 0
fi
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$REMOTE"
if [ "${DETACH:-0}" = 1 ]; then
  echo "follow host 0: gcloud compute tpus tpu-vm ssh $(quoted "$TPU_NAME")--zone $(quoted "$ZONE")--worker=0 --command 'tail -f ~/$LOG'"
fi
