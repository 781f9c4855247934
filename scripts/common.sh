# Sourced by the scripts: progress lines, Debian packages, and Python venvs of pinned tools.

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# apt_install PACKAGE...: Debian packages, as root or through sudo.
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# venv DIR REQUIREMENTS: a venv at DIR holding exactly the pinned tools of REQUIREMENTS.
venv() {
  if [ ! -x "$1/bin/python" ]; then
    # Debian's own Python keeps venv support in a package of its own.
    python3 -m venv "$1" 2>/dev/null || { rm -rf "$1"; apt_install python3-venv; python3 -m venv "$1"; }
  fi
  "$1/bin/pip" install --quiet --disable-pip-version-check -r "$2"
}
