# Shared helpers for cloudphone's scripts (sourced, not run).

# Repository root and the cache every script shares (kernel, images, sandbox).
CLOUDPHONE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
export CLOUDPHONE_ROOT
export CLOUDPHONE_CACHE=${CLOUDPHONE_CACHE:-$CLOUDPHONE_ROOT/.cache}

# say MSG: progress on stderr, prefixed with the script's name.
say() { printf '\033[1m%s:\033[0m %s\n' "$(basename "$0")" "$*" >&2; }
# die MSG: fail with a message naming what went wrong.
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# need_packages PKG...: apt-get install the Debian packages that are missing (idempotent,
# waits for other apt runs instead of failing on the dpkg lock).
need_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] ||
    "${apt[@]}" update >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
}

# need_nextest: cargo-nextest is on the rust machines; install it from crates.io elsewhere.
need_nextest() {
  cargo nextest --version >/dev/null 2>&1 && return 0
  say "installing cargo-nextest (cargo install, once)"
  cargo install --locked cargo-nextest >&2 || die "cargo install cargo-nextest failed"
}
