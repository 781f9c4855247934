# Sourced by the scripts: progress lines, and Python venvs of pinned tools.

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# venv DIR REQUIREMENTS: a venv at DIR holding exactly the pinned tools of REQUIREMENTS.
venv() {
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/pip" install --quiet --disable-pip-version-check -r "$2"
}
