# Sourced by the bench scripts: paths, helpers, the pinned Python venv and the release binary.
# Expects `here` (this folder) to be set by the caller.
root="$(cd "$here/.." && pwd)"
venv="${SLUICE_BENCH_VENV:-$HOME/.cache/sluice-bench-venv}"
data_root="${SLUICE_BENCH_DATA:-$HOME/.cache/sluice-bench-data}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"

say() { printf '\n== %s\n' "$*" >&2; }
now() { date +%s.%N; }

# Python: DuckDB, Polars, deltalake, pyarrow at the versions pinned in requirements.txt.
if [[ ! -x "$venv/bin/python" ]]; then
  say "creating the Python venv at $venv"
  python3 -m venv "$venv"
fi
if ! cmp -s "$here/requirements.txt" "$venv/.sluice-requirements" 2>/dev/null; then
  say "installing bench/requirements.txt into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.sluice-requirements"
fi
py="$venv/bin/python"

# The release binary: SLUICE_BIN if given, else built here.
if [[ -z "${SLUICE_BIN:-}" ]]; then
  say "building sluice (release; the first build takes ~30 minutes on 2 cores)"
  (cd "$root" && nice -n 10 cargo build --release -p sluice-cli --quiet)
  SLUICE_BIN="$CARGO_TARGET_DIR/release/sluice"
fi
