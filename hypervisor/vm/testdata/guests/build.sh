#!/bin/sh
# Assembles the tiny test guests into flat binaries loaded at 0x1000.
# Run after editing a .S file; TestGuestBinariesMatchSources checks that the
# committed .bin files are up to date.
set -eu
cd "$(dirname "$0")"
out=${1:-.}
for src in *.S; do
	name=${src%.S}
	as --32 -o "$out/$name.o" "$src"
	ld -m elf_i386 -Ttext=0x1000 --oformat=binary -o "$out/$name.bin" "$out/$name.o"
	rm -f "$out/$name.o"
done
