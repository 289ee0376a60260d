# Sourced by the scripts (run from the project root): which Python they install into and run, with a project
# virtual environment (.venv) where the system Python refuses pip (PEP 668).
#
#   mmer_python            print the interpreter to use (messages go to stderr)
#   mmer_python --create   the same, creating .venv first where one is needed (scripts/install.sh)
#
# The choice, in order:
#   1. PYTHON (default python3) runs inside a virtual environment (an activated one, or PYTHON=some/venv/bin/python):
#      that one.
#   2. The project's .venv exists: .venv/bin/python.
#   3. PYTHON is externally managed (an EXTERNALLY-MANAGED file in its standard library folder, as on Debian 12+,
#      Ubuntu 23.04+; pip there refuses to install): .venv is created from it (on Debian/Ubuntu, apt-get installs
#      python3-venv first where `python -m venv` is missing), then .venv/bin/python.
#   4. Otherwise PYTHON itself. An interpreter that is neither a venv nor externally managed (pyenv, conda, the
#      python Docker images, CI) is the user's own to install into, pip accepts it, and the README's commands then
#      work without activating anything, so no second copy of torch and transformers is made for it.

mmer_python() {
  local base=${PYTHON:-python3} venv=$PWD/.venv
  if ! command -v "$base" >/dev/null; then
    echo "error: no Python interpreter '$base' (set PYTHON to one, 3.10 or later)" >&2
    return 1
  fi
  if "$base" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    echo "$base"
    return 0
  fi
  if [ -x "$venv/bin/python" ]; then
    echo "using the project's virtual environment .venv ($venv/bin/python)" >&2
    echo "$venv/bin/python"
    return 0
  fi
  # pip's own test (PEP 668): the marker file in sysconfig's stdlib folder of a non-venv interpreter.
  if ! "$base" -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    echo "$base"
    return 0
  fi
  if [ "${1:-}" != --create ]; then
    echo "error: $base is externally managed (PEP 668) and .venv does not exist yet: run bash scripts/install.sh" >&2
    return 1
  fi
  echo "$base is externally managed (PEP 668: its pip refuses to install), so everything goes into a project" \
       "virtual environment: creating $venv" >&2
  if ! "$base" -c 'import ensurepip, venv' 2>/dev/null; then
    if command -v apt-get >/dev/null; then
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo="sudo"
      echo "python -m venv is not available: installing python3-venv with apt-get" >&2
      $sudo apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3-venv >&2
    fi
    if ! "$base" -c 'import ensurepip, venv' 2>/dev/null; then
      local version
      version=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      echo "error: $base cannot create a virtual environment (no ensurepip); install python$version-venv" \
           "(Debian/Ubuntu) or create and activate one yourself, then run this again" >&2
      return 1
    fi
  fi
  if ! "$base" -m venv "$venv" >&2; then
    rm -rf "$venv"  # a half-made .venv would be taken as ready next time
    echo "error: $base -m venv $venv failed" >&2
    return 1
  fi
  echo "created .venv; the scripts use it from now on. For the README's other commands activate it first:" >&2
  echo "    source .venv/bin/activate" >&2
  echo "$venv/bin/python"
}
