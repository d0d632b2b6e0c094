#!/usr/bin/env bash
# Prints the path of a working Python 3.12 interpreter, or fails with a clear message.
# Candidates: python3.12 on PATH (a pyenv shim may exist without working, so each
# candidate is actually run), then every pyenv-installed 3.12.x.
cands=()
command -v python3.12 >/dev/null 2>&1 && cands+=("$(command -v python3.12)")
root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
for p in "$root"/versions/3.12.*/bin/python3; do [ -x "$p" ] && cands+=("$p"); done
for p in "${cands[@]}"; do
  if "$p" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1; then
    echo "$p"; exit 0
  fi
done
echo "ERROR: no working Python 3.12 found (tried: ${cands[*]:-none}). jaxrec needs Python 3.12 (jax 0.12); install it, e.g. 'pyenv install 3.12'." >&2
exit 1
