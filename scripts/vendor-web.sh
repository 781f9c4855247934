#!/usr/bin/env bash
# Fetches the web UI's two libraries from npm into web/vendor/, at the versions pinned below:
# marked (Markdown → HTML) and DOMPurify (what the page may keep of that HTML).
#   ./scripts/vendor-web.sh
# The web UI has no build step, so these files are committed; run this only to change a
# version (edit the pins, run, commit web/vendor/). Each tarball must match its pinned
# integrity (the registry's dist.integrity: `npm view marked@VERSION dist.integrity`), so
# that a version cannot silently change its content.
set -euo pipefail
cd "$(dirname "$0")/.."

# The pins, in one place: name version integrity.
PACKAGES=(
  "marked 18.2.1 sha512-ii4bxCTCqqwpT86XZWgJNs+ZnAIZksmLGYMViWA7PDIXYIeNo1x6cDdX3JOip9NM/cI6p8z57FxliACboTruMA=="
  "dompurify 3.4.18 sha512-ofe3wI/uNm68HInABYFJYqQxRw1EaKAjNdrFVKqjUY+UZurvNd2L/HuQe097s/4RivWiZyP6tT7aoT8atjfhwg=="
)
# What the page loads from each package (minified builds), and their licences.
FILES_marked=(lib/marked.esm.js LICENSE)
FILES_dompurify=(dist/purify.min.js LICENSE LICENSE-MPL)

command -v npm >/dev/null || { echo "npm is needed (Debian: apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

sha512() { node -e 'const c=require("crypto"),f=require("fs");process.stdout.write("sha512-"+c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$1"; }

rm -rf web/vendor
mkdir -p web/vendor
for pin in "${PACKAGES[@]}"; do
  read -r name version integrity <<<"$pin"
  tarball=$(cd "$tmp" && npm pack --silent "$name@$version" | tail -n 1)
  actual=$(sha512 "$tmp/$tarball")
  if [ "$actual" != "$integrity" ]; then
    echo "$name@$version: the tarball's integrity is $actual, not the pinned $integrity" >&2
    exit 1
  fi
  mkdir -p "$tmp/$name" "web/vendor/$name"
  tar -xzf "$tmp/$tarball" -C "$tmp/$name"
  files="FILES_${name}[@]"
  for file in "${!files}"; do
    cp "$tmp/$name/package/$file" "web/vendor/$name/"
  done
  echo "$name $version" >>web/vendor/VERSIONS
done

# Checked by the browser tests: the page loads exactly what this script fetched.
(cd web/vendor && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum >SHA256SUMS)
echo "Vendored into web/vendor/:"
sed 's/^/  /' web/vendor/VERSIONS
sed 's/^/  /' web/vendor/SHA256SUMS
