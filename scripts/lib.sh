# Shared helpers for cloudphone's scripts (sourced, not run).

# Repository root and the cache every script shares (kernel, images, sandbox).
CLOUDPHONE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
export CLOUDPHONE_ROOT
export CLOUDPHONE_CACHE=${CLOUDPHONE_CACHE:-$CLOUDPHONE_ROOT/.cache}

# say MSG: progress on stderr, prefixed with the script's name.
say() { printf '\033[1m%s:\033[0m %s\n' "$(basename "$0")" "$*" >&2; }
# die MSG: fail with a message naming what went wrong.
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# installed PKG: true when dpkg has PKG fully installed.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# need_packages PKG...: apt-get install the Debian packages that are missing (idempotent,
# waits for other apt runs instead of failing on the dpkg lock) and leave the machine with every
# one of them. The image may carry newer packages than its release (e.g. qemu-utils from
# backports) that conflict with what we install (qemu-system-x86 from the release): apt would
# remove them silently, so every package a simulated install would remove is installed again in
# the newest version a repository offers (--allow-downgrades), which lives with the rest.
# After apt returns, every requested (and kept) package is checked again.
need_packages() {
  local missing=() p
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] ||
    "${apt[@]}" update >&2 || die "apt-get update failed"
  local keep=() removed r v round
  for round in 1 2 3; do
    removed=$("${apt[@]}" -s install -y --allow-downgrades "${missing[@]}" "${keep[@]+"${keep[@]}"}" 2>/dev/null |
      awk '/^Remv /{print $2}') || true
    [ -z "$removed" ] && break
    for r in $removed; do
      v=$(apt-cache madison "$r" 2>/dev/null | awk -F' *[|] *' 'NR==1{print $2}')
      [ -n "$v" ] || die "installing ${missing[*]} would remove $r, and no repository offers another version of it; install a compatible set by hand"
      say "apt would remove $r (installed: $(dpkg-query -W -f='${Version}' "$r")); keeping it at the repository's $v"
      keep+=("$r=$v")
    done
  done
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends --allow-downgrades \
    "${missing[@]}" "${keep[@]+"${keep[@]}"}" >&2 || die "apt-get install ${missing[*]} ${keep[*]:-} failed"
  local gone=()
  for p in "$@" "${keep[@]+"${keep[@]%%=*}"}"; do installed "$p" || gone+=("$p"); done
  [ ${#gone[@]} -eq 0 ] || die "after apt-get, these packages are still not installed: ${gone[*]} (see apt's output above)"
}

# need_tools TOOL:PACKAGE...: fail before any test runs when a command is not on PATH, naming
# the Debian package that provides it (a package can be installed and its tool still gone).
need_tools() {
  local t gone=()
  for t in "$@"; do command -v "${t%%:*}" >/dev/null || gone+=("${t%%:*} (package ${t#*:})"); done
  [ ${#gone[@]} -eq 0 ] || die "tools missing from PATH: ${gone[*]}"
}

# need_nextest: cargo-nextest is on the rust machines; install it from crates.io elsewhere.
need_nextest() {
  cargo nextest --version >/dev/null 2>&1 && return 0
  say "installing cargo-nextest (cargo install, once)"
  cargo install --locked cargo-nextest >&2 || die "cargo install cargo-nextest failed"
}
