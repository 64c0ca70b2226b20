# Sourced by scripts/test and scripts/demo: make or refresh the virtual
# environment with the three packages installed editable plus the pinned dev
# tools, and set $py to its interpreter.
#
# Environment: PYTHON picks the interpreter (default: python3); VENV picks the
# environment directory (default: .venv in the repository root).
python=${PYTHON:-python3}
venv=${VENV:-$root/.venv}
stamp="$venv/.jobserver-installed"
want=$(cat "$root/requirements-dev.txt" "$root"/packages/*/pyproject.toml | cksum)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== preparing $venv with $("$python" --version 2>&1)" >&2
    "$python" -m venv --clear "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$root/requirements-dev.txt" \
        -e "$root/packages/jobserver-core" \
        -e "$root/packages/jobserver-executor" \
        -e "$root/packages/jobserver-extras" >&2
    echo "$want" > "$stamp"
fi
py="$venv/bin/python"
