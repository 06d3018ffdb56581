#!/usr/bin/env bash
# Variables are read indirectly by render() (${!name}):
# shellcheck disable=SC2034
# Turn a fresh Debian 12 machine into a telemetry-core node, or show what that
# would write with --root DIR.
#
#   deploy/bootstrap.sh --role edge|mapreduce [--root DIR] [--node-id ID]
#       [--data-dir DIR] [--s3-bucket NAME [--s3-prefix P] [--s3-endpoint URL]]
#       [--redis-url URL] [--histograms-server URL] [--listen HOST:PORT]
#       [--spark-master URL] [--user NAME] [--venv DIR] [--package SPEC]
#       [--uid N] [--no-systemctl]
#
# Roles: edge = telemetry serve + telemetry process + a daily maintenance timer
# (retention sweep, and S3 policy apply when publishing to S3); mapreduce =
# telemetry mapreduce on Spark (Java + pyspark). Both get a service user, a
# virtualenv with the package and the role's extras, /etc/telemetry/telemetry.yaml
# from deploy/templates, an environment file for secrets (created once, empty,
# mode 0600: secrets are only ever ${VAR} references in the config), systemd
# units and logrotate rules.
#
# Idempotent: a file is rewritten only when its content or mode would change,
# the user and virtualenv are made only when missing, and systemctl runs only
# when something changed (then the services restart). The last line says how
# many changes were made.
#
# --no-systemctl writes and enables the units but does not call systemctl
# (image builds: a container build has no running systemd).
#
# --root DIR writes every file under DIR instead of /, creates no user (the
# useradd command is recorded in DIR/var/lib/telemetry-bootstrap/), builds no
# virtualenv (the pip command is recorded likewise), calls no systemctl
# (enabling is done as systemctl does it: symlinks in *.wants/), chowns nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATES="$HERE/templates"

ROLE="" ROOT="" NODE_ID="" DATA_DIR="/var/lib/telemetry" S3_BUCKET="" S3_PREFIX="" S3_ENDPOINT=""
REDIS_URL="" HISTOGRAMS_SERVER="https://hg.mozilla.org" LISTEN="127.0.0.1:8080" SPARK_MASTER="local[*]"
SYSTEMCTL=yes SERVICE_UID="" SERVICE_USER="telemetry" VENV="/opt/telemetry/venv" PACKAGE="$(cd "$HERE/.." && pwd)"
CONFIG_DIR="/etc/telemetry" LOG_DIR="/var/log/telemetry" UNIT_DIR="/etc/systemd/system"

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --role) ROLE="${2:-}"; shift 2 ;;
        --root) ROOT="${2:-}"; shift 2 ;;
        --node-id) NODE_ID="${2:-}"; shift 2 ;;
        --data-dir) DATA_DIR="${2:-}"; shift 2 ;;
        --s3-bucket) S3_BUCKET="${2:-}"; shift 2 ;;
        --s3-prefix) S3_PREFIX="${2:-}"; shift 2 ;;
        --s3-endpoint) S3_ENDPOINT="${2:-}"; shift 2 ;;
        --redis-url) REDIS_URL="${2:-}"; shift 2 ;;
        --histograms-server) HISTOGRAMS_SERVER="${2:-}"; shift 2 ;;
        --listen) LISTEN="${2:-}"; shift 2 ;;
        --spark-master) SPARK_MASTER="${2:-}"; shift 2 ;;
        --user) SERVICE_USER="${2:-}"; shift 2 ;;
        --venv) VENV="${2:-}"; shift 2 ;;
        --package) PACKAGE="${2:-}"; shift 2 ;;
        --no-systemctl) SYSTEMCTL=no; shift ;;
        --uid) SERVICE_UID="${2:-}"; shift 2 ;;
        -h|--help) awk 'NR > 3 && /^#/ { sub(/^# ?/, ""); print; next } NR > 3 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown option $1; see $0 --help" ;;
    esac
done

# ----------------------------------------------------------------- parameters

case "$ROLE" in
    edge|mapreduce) ;;
    "") die "--role is required: edge (edge + processor) or mapreduce" ;;
    *) die "unknown role '$ROLE': use edge or mapreduce" ;;
esac
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT" && ROOT="$(cd "$ROOT" && pwd)"
    [ "$ROOT" != "/" ] || die "--root / is the real system; leave --root out to bootstrap this machine"
elif [ "$(id -u)" -ne 0 ]; then
    die "bootstrapping this machine needs root; run with sudo, or use --root DIR for a dry target"
fi
[ -n "$NODE_ID" ] || NODE_ID="$(hostname -s 2>/dev/null || hostname)"
[[ "$NODE_ID" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] \
    || die "node id '$NODE_ID' must be 1-63 of A-Z a-z 0-9 _ . - starting with a letter or digit; pass --node-id"
[ -z "$SERVICE_UID" ] || [[ "$SERVICE_UID" =~ ^[1-9][0-9]{0,8}$ ]] || die "--uid '$SERVICE_UID' must be a positive number"
[[ "$SERVICE_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "user name '$SERVICE_USER' is not a valid system user name"
for path in "$DATA_DIR" "$VENV"; do
    [[ "$path" = /* ]] || die "'$path' must be an absolute path"
done
[[ "$LISTEN" =~ ^([0-9.]+|\[[0-9a-fA-F:]+\]):([0-9]{1,5})$ ]] || die "--listen '$LISTEN' must be HOST:PORT, e.g. 127.0.0.1:8080"
LISTEN_HOST="${BASH_REMATCH[1]}" LISTEN_PORT="${BASH_REMATCH[2]}"
if [ -n "$REDIS_URL" ]; then
    [[ "$REDIS_URL" =~ ^(redis|rediss):// ]] || die "--redis-url must start with redis:// or rediss://"
    authority="${REDIS_URL#*://}"; authority="${authority%%/*}"
    if [[ "$authority" == *@* ]]; then
        password="${authority%@*}"; password="${password#*:}"
        [[ -z "$password" || "$password" =~ ^\$\{[A-Za-z_][A-Za-z0-9_]*\}$ ]] \
            || die "--redis-url holds a password in clear; pass it as a reference, e.g. 'redis://:\${TELEMETRY_REDIS_PASSWORD}@host:6379/0', and put the value in $CONFIG_DIR/telemetry.env"
    fi
fi
[ -z "$S3_ENDPOINT" ] || [[ "$S3_ENDPOINT" =~ ^https?:// ]] || die "--s3-endpoint must be an http(s) URL"
[ -z "$S3_BUCKET" ] || [[ "$S3_BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || die "'$S3_BUCKET' is not a valid S3 bucket name"
[ -n "$S3_BUCKET" ] || [ -z "$S3_PREFIX$S3_ENDPOINT" ] || die "--s3-prefix and --s3-endpoint need --s3-bucket"

yaml_or_null() { if [ -n "$1" ]; then printf '"%s"' "$1"; else printf 'null'; fi; }
PUBLISH_BACKEND=local; [ -z "$S3_BUCKET" ] || PUBLISH_BACKEND=s3
DEDUP_BACKEND=sqlite; [ -z "$REDIS_URL" ] || DEDUP_BACKEND=redis
EXTRAS="zstd"
[ "$DEDUP_BACKEND" = sqlite ] || EXTRAS="$EXTRAS,redis"
[ "$ROLE" = edge ] || EXTRAS="$EXTRAS,spark"
POLICY_APPLY="# no S3 publishing, so no telemetry policy apply"
[ "$PUBLISH_BACKEND" = local ] || POLICY_APPLY="ExecStart=$VENV/bin/telemetry policy apply --config $CONFIG_DIR/telemetry.yaml"

CHANGED=0

# ----------------------------------------------------------------- helpers

sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

render() {  # render TEMPLATE: substitute every @NAME@ marker
    local template="$TEMPLATES/$1" value args=()
    for name in NODE_ID DATA_DIR LISTEN_HOST LISTEN_PORT HISTOGRAMS_SERVER DEDUP_BACKEND PUBLISH_BACKEND \
                S3_PREFIX SPARK_MASTER USER VENV CONFIG ENV_FILE LOG_DIR POLICY_APPLY REDIS_URL S3_BUCKET S3_ENDPOINT; do
        case "$name" in
            USER) value="$SERVICE_USER" ;;
            CONFIG) value="$CONFIG_DIR/telemetry.yaml" ;;
            ENV_FILE) value="$CONFIG_DIR/telemetry.env" ;;
            REDIS_URL|S3_BUCKET|S3_ENDPOINT) value="$(yaml_or_null "${!name}")" ;;
            *) value="${!name}" ;;
        esac
        args+=(-e "s|@${name}@|$(sed_escape "$value")|g")
    done
    sed "${args[@]}" "$template"
}

put() {  # put MODE PATH < CONTENT: write ROOT/PATH when its content or mode differs (not in a pipe: counts)
    local mode="$1" target="$ROOT$2" tmp
    tmp="$(mktemp)"
    cat > "$tmp"
    if [ -f "$target" ] && cmp -s "$tmp" "$target" && [ "$(stat -c %a "$target")" = "${mode#0}" ]; then
        rm -f "$tmp"
        return
    fi
    install -D -m "$mode" "$tmp" "$target"
    rm -f "$tmp"
    echo "wrote $2 (mode $mode)"
    CHANGED=$((CHANGED + 1))
}

put_once() {  # put_once MODE PATH: like put, but never touch an existing file (it holds the operator's secrets)
    if [ -e "$ROOT$2" ]; then cat > /dev/null; return; fi
    put "$@"
}

directory() {  # directory MODE PATH [OWNER]
    local target="$ROOT$2"
    if [ ! -d "$target" ]; then
        mkdir -p "$target"
        echo "created $2/"
        CHANGED=$((CHANGED + 1))
    fi
    if [ "$(stat -c %a "$target")" != "${1#0}" ]; then
        chmod "$1" "$target"
        echo "chmod $1 $2"
        CHANGED=$((CHANGED + 1))
    fi
    if [ -z "$ROOT" ] && [ -n "${3:-}" ] && [ "$(stat -c %U:%G "$target")" != "$3:$3" ]; then
        chown "$3:$3" "$target"
        echo "chown $3 $2"
        CHANGED=$((CHANGED + 1))
    fi
}

enable_unit() {  # enable_unit UNIT TARGET: what systemctl enable writes, as a symlink
    local link="$ROOT$UNIT_DIR/$2.wants/$1"
    if [ "$(readlink "$link" 2>/dev/null)" != "$UNIT_DIR/$1" ]; then
        mkdir -p "$(dirname "$link")"
        ln -sfn "$UNIT_DIR/$1" "$link"
        echo "enabled $1 ($2)"
        CHANGED=$((CHANGED + 1))
    fi
}

# ----------------------------------------------------------------- user and virtualenv

USERADD=(useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin)
[ -z "$SERVICE_UID" ] || USERADD+=(--uid "$SERVICE_UID")
USERADD+=("$SERVICE_USER")
PIP=("$VENV/bin/pip" install --quiet "${PACKAGE}[${EXTRAS}]")
if [ -n "$ROOT" ]; then
    put 0644 "/var/lib/telemetry-bootstrap/user-$SERVICE_USER" < <(printf '%s\n' "${USERADD[*]}")
    put 0644 /var/lib/telemetry-bootstrap/virtualenv < <(printf 'python3 -m venv %s\n%s\n' "$VENV" "${PIP[*]}")
else
    if ! id -u "$SERVICE_USER" > /dev/null 2>&1; then
        "${USERADD[@]}"
        echo "created user $SERVICE_USER"
        CHANGED=$((CHANGED + 1))
    fi
    if [ "$ROLE" = mapreduce ] && ! command -v java > /dev/null; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openjdk-17-jre-headless
        CHANGED=$((CHANGED + 1))
    fi
    # A C compiler and the Python headers build the converter's compiled fast path;
    # without them pip installs the pure-Python converter (same results, slower).
    build_packages=()
    command -v cc > /dev/null || build_packages+=(gcc libc6-dev)
    python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || build_packages+=(python3-dev)
    if ((${#build_packages[@]})); then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${build_packages[@]}"
        CHANGED=$((CHANGED + 1))
    fi
    stamp="$VENV/.telemetry-bootstrap"
    if [ ! -x "$VENV/bin/python" ]; then
        if ! python3 -c 'import ensurepip, venv' 2> /dev/null; then  # Debian splits venv out of python3
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
        fi
        python3 -m venv "$VENV"
        echo "created virtualenv $VENV"
        CHANGED=$((CHANGED + 1))
    fi
    # What is installed: the pip command plus, for a source directory, a digest of its code,
    # so a changed checkout reinstalls and an unchanged one does not.
    wanted="${PIP[*]}"
    if [ -d "$PACKAGE" ]; then
        wanted="$wanted $(find "$PACKAGE/setup.py" "$PACKAGE/telemetry_core" -type f \
            \( -name '*.py' -o -name '*.json' -o -name '*.c' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        "${PIP[@]}"
        printf '%s' "$wanted" > "$stamp"
        echo "installed ${PACKAGE}[${EXTRAS}] into $VENV"
        CHANGED=$((CHANGED + 1))
    fi
fi

# ----------------------------------------------------------------- files

directory 0755 "$CONFIG_DIR"
directory 0750 "$DATA_DIR" "$SERVICE_USER"
directory 0750 "$LOG_DIR" "$SERVICE_USER"
put 0640 "$CONFIG_DIR/telemetry.yaml" < <(render "$ROLE.yaml.in")
put_once 0600 "$CONFIG_DIR/telemetry.env" < <(render telemetry.env.in)
put 0644 /etc/logrotate.d/telemetry < <(render logrotate.in)
if [ -z "$ROOT" ] && [ "$(stat -c %G "$CONFIG_DIR/telemetry.yaml")" != "$SERVICE_USER" ]; then
    chgrp "$SERVICE_USER" "$CONFIG_DIR/telemetry.yaml"  # the service reads its config; only root writes it
fi

if [ "$ROLE" = edge ]; then
    for unit in telemetry-serve.service telemetry-process.service telemetry-maintenance.service \
                telemetry-maintenance.timer; do
        put 0644 "$UNIT_DIR/$unit" < <(render "$unit.in")
    done
    enable_unit telemetry-serve.service multi-user.target
    enable_unit telemetry-process.service multi-user.target
    enable_unit telemetry-maintenance.timer timers.target
fi

# Any change (package, config, units) restarts the services; an unchanged node is left alone.
if [ -z "$ROOT" ] && [ "$SYSTEMCTL" = yes ] && [ "$CHANGED" -ne 0 ]; then
    systemctl daemon-reload
    if [ "$ROLE" = edge ]; then
        systemctl restart telemetry-serve.service telemetry-process.service
        systemctl start telemetry-maintenance.timer
    fi
fi

if [ "$CHANGED" -eq 0 ]; then
    echo "bootstrap ($ROLE): nothing changed"
else
    echo "bootstrap ($ROLE): $CHANGED changes"
fi
