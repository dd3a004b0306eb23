"""Generate csrc/core/unicode_tables.inc: the Unicode properties of the C++ tokenizer and text cleaning.

    python csrc/tools/gen_unicode_tables.py [--ucd /usr/share/unicode] [--output csrc/core/unicode_tables.inc]
    python csrc/tools/gen_unicode_tables.py --check     # exit 1 if the committed file is not what this writes

The source is the Unicode Character Database as text (UnicodeData.txt, DerivedAge.txt, PropList.txt,
SpecialCasing.txt, DerivedCoreProperties.txt): Debian's `unicode-data` package installs it in
/usr/share/unicode (UCD 15.0.0 on Debian 12). No table is written by hand; the rules below say which
properties, at which Unicode version, each consumer reads.

The reference (`xvlm_edge.tokenizer`, the Rust `tokenizers` 0.23 pipeline) mixes three Unicode versions:
- `unicode_categories` 0.1.1 (BertNormalizer's control test, its Mn accent strip, BertPreTokenizer's
  punctuation) carries the general categories of Unicode 8.0.0. They are the UCD's categories of the code
  points assigned by 8.0 (DerivedAge), unassigned (Cn) for the rest, except six code points whose category
  changed after 8.0 (GC_CHANGED_SINCE_8_0, checked against the 8.0 data of the npm `unicode-8.0.0`
  package and against `tokenizers` code point by code point in tests/test_cpp_tokenizer.py).
- `unicode-normalization-alignments` 0.1.12 (NFD) carries Unicode 9.0.0: decompositions and combining
  classes of the code points assigned by 9.0.
- Rust's std (`char::is_whitespace`, `char::to_lowercase`) carries its compiler's Unicode (17.0 for the
  0.23.3 wheels): White_Space and the full lower-case mapping are read from the UCD given here. The code
  points that gained a mapping after it (Unicode 16/17 letters, unassigned in 15.0) are not lower-cased.
The text cleaning (`xvlm_edge.text`: `str.lower()`, `re`'s `\\s`) follows CPython's own tables: full
lower-case mapping with Final_Sigma (Cased, Case_Ignorable), and `str.isspace` (bidirectional class WS, B
or S, or category Zs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = REPO / "csrc" / "core" / "unicode_tables.inc"
N_CODE_POINTS = 0x110000
BLOCK_SHIFT = 7  # 128 code points a block: the smallest two-stage table for these flags

CATEGORY_VERSION = (8, 0)  # unicode_categories 0.1.1
NFD_VERSION = (9, 0)  # unicode-normalization-alignments 0.1.12
# Code point: (category in Unicode 8.0, category in the UCD read). The second value is asserted, so a UCD
# that changes one of them again stops the generator instead of writing a wrong table.
GC_CHANGED_SINCE_8_0 = {
    0x166D: ("Po", "So"),  # CANADIAN SYLLABICS CHI SIGN
    0x1734: ("Mn", "Mc"),  # HANUNOO SIGN PAMUDPOD
    0x1885: ("Lo", "Mn"),  # MONGOLIAN LETTER ALI GALI BALUDA
    0x1886: ("Lo", "Mn"),  # MONGOLIAN LETTER ALI GALI THREE BALUDA
    0xA9BD: ("Mc", "Mn"),  # JAVANESE CONSONANT SIGN KERET
    0x111C9: ("Po", "Mn"),  # SHARADA SANDHI MARK
}
ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

# Flag bits of kFlags; csrc/core/tokenizer.cpp names the same bits.
FLAGS = {
    "kTkRemoved": 1 << 0,  # BertNormalizer drops it: NUL, U+FFFD, Cc/Cf/Co (8.0) but \t \n \r
    "kWhiteSpace": 1 << 1,  # White_Space: BertNormalizer maps it to ' ', BertPreTokenizer splits on it
    "kTkNonspacingMark": 1 << 2,  # Mn (8.0): dropped after NFD (strip_accents)
    "kTkPunctuation": 1 << 3,  # ASCII punctuation or P* (8.0): BertPreTokenizer isolates it
    "kDecomposes": 1 << 4,  # has a canonical decomposition (9.0, Hangul syllables aside)
    "kCombining": 1 << 5,  # canonical combining class > 0 (9.0)
    "kHasLower": 1 << 6,  # full lower-case mapping differs from the code point
    "kPySpace": 1 << 7,  # CPython str.isspace: bidi WS/B/S or Zs
    "kCased": 1 << 8,  # Cased (Final_Sigma context)
    "kCaseIgnorable": 1 << 9,  # Case_Ignorable (Final_Sigma context)
}


def _fields(path: Path) -> Iterator[tuple[int, int, list[str]]]:
    """(first, last, fields) of each data line of a UCD file `a..b ; f1 ; f2 # comment`."""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, *rest = (f.strip() for f in line.split(";"))
        first, _, last = head.partition("..")
        yield int(first, 16), int(last or first, 16), rest


def _version(ucd: Path) -> str:
    """'15.0.0' from the first line of DerivedAge.txt ('# DerivedAge-15.0.0.txt')."""
    first = ucd.joinpath("DerivedAge.txt").read_text(encoding="utf-8").splitlines()[0]
    if not first.startswith("# DerivedAge-"):
        msg = f"{ucd / 'DerivedAge.txt'} does not start with its version line"
        raise SystemExit(msg)
    return first.removeprefix("# DerivedAge-").removesuffix(".txt")


class Ucd:
    """The properties read from one UCD directory."""

    def __init__(self, root: Path) -> None:
        self.version = _version(root)
        self.category: dict[int, str] = {}
        self.bidi: dict[int, str] = {}
        self.ccc: dict[int, int] = {}
        self.decomposition: dict[int, list[int]] = {}
        self.lower: dict[int, list[int]] = {}
        first = 0
        for line in root.joinpath("UnicodeData.txt").read_text(encoding="utf-8").splitlines():
            f = line.split(";")
            cp = int(f[0], 16)
            if f[1].endswith(", First>"):
                first = cp
                continue
            span = range(first, cp + 1) if f[1].endswith(", Last>") else range(cp, cp + 1)
            for c in span:
                self.category[c], self.bidi[c] = f[2], f[4]
                if int(f[3]):
                    self.ccc[c] = int(f[3])
            if f[5] and not f[5].startswith("<"):  # canonical only; <tag> marks a compatibility mapping
                self.decomposition[cp] = [int(x, 16) for x in f[5].split()]
            if f[13]:
                self.lower[cp] = [int(f[13], 16)]
        for cp, _, rest in _fields(root / "SpecialCasing.txt"):
            if len(rest) >= 4 and rest[3]:
                continue  # conditional (Final_Sigma, language-specific): neither Rust nor CPython table it
            self.lower[cp] = [int(x, 16) for x in rest[0].split()]
        self.age: dict[int, tuple[int, int]] = {}
        for a, b, (age,) in _fields(root / "DerivedAge.txt"):
            major, minor = age.split(".")
            for c in range(a, b + 1):
                self.age[c] = (int(major), int(minor))
        self.white_space = self._property(root / "PropList.txt", "White_Space")
        self.cased = self._property(root / "DerivedCoreProperties.txt", "Cased")
        self.case_ignorable = self._property(root / "DerivedCoreProperties.txt", "Case_Ignorable")

    @staticmethod
    def _property(path: Path, name: str) -> set[int]:
        return {c for a, b, rest in _fields(path) if rest[0] == name for c in range(a, b + 1)}

    def assigned_by(self, cp: int, version: tuple[int, int]) -> bool:
        return cp in self.age and self.age[cp] <= version

    def category_8_0(self, cp: int) -> str:
        if cp in GC_CHANGED_SINCE_8_0:
            old, new = GC_CHANGED_SINCE_8_0[cp]
            if self.category.get(cp) != new:
                msg = f"U+{cp:04X} is {self.category.get(cp)} in UCD {self.version}, expected {new}: update GC_CHANGED_SINCE_8_0"
                raise SystemExit(msg)
            return old
        return self.category.get(cp, "Cn") if self.assigned_by(cp, CATEGORY_VERSION) else "Cn"

    def nfd_9_0(self, cp: int) -> list[int]:
        """Full canonical decomposition with the 9.0 data (Hangul syllables are decomposed in code)."""
        if cp not in self.decomposition or not self.assigned_by(cp, NFD_VERSION):
            return [cp]
        return [d for part in self.decomposition[cp] for d in self.nfd_9_0(part)]

    def ccc_9_0(self, cp: int) -> int:
        return self.ccc.get(cp, 0) if self.assigned_by(cp, NFD_VERSION) else 0


def flags_of(ucd: Ucd, cp: int) -> int:
    if 0xD800 <= cp <= 0xDFFF:
        return 0  # never reaches a table lookup: the UTF-8 decoder refuses surrogates
    gc8 = ucd.category_8_0(cp)
    f = 0
    if cp in (0, 0xFFFD) or (gc8 in ("Cc", "Cf", "Co") and cp not in (0x09, 0x0A, 0x0D)):
        f |= FLAGS["kTkRemoved"]
    if cp in ucd.white_space:
        f |= FLAGS["kWhiteSpace"]
    if gc8 == "Mn":
        f |= FLAGS["kTkNonspacingMark"]
    if gc8.startswith("P") or (cp < 0x80 and chr(cp) in ASCII_PUNCTUATION):
        f |= FLAGS["kTkPunctuation"]
    if ucd.nfd_9_0(cp) != [cp]:
        f |= FLAGS["kDecomposes"]
    if ucd.ccc_9_0(cp):
        f |= FLAGS["kCombining"]
    if ucd.lower.get(cp, [cp]) != [cp]:
        f |= FLAGS["kHasLower"]
    if ucd.bidi.get(cp) in ("WS", "B", "S") or ucd.category.get(cp) == "Zs":
        f |= FLAGS["kPySpace"]
    if cp in ucd.cased:
        f |= FLAGS["kCased"]
    if cp in ucd.case_ignorable:
        f |= FLAGS["kCaseIgnorable"]
    return f


def _array(ctype: str, name: str, values: list[int], per_line: int = 24) -> str:
    rows = [", ".join(str(v) for v in values[i : i + per_line]) for i in range(0, len(values), per_line)]
    return f"constexpr {ctype} {name}[] = {{\n" + "".join(f"    {row},\n" for row in rows) + "};\n"


def _mapping(name: str, entries: dict[int, list[int]]) -> str:
    """A sorted (code point, pool offset, length) index and its pool of code points."""
    index, pool = [], []
    for cp in sorted(entries):
        seq = entries[cp]
        index.append(f"{{{cp}, {len(pool)}, {len(seq)}}}")
        pool.extend(seq)
    if len(pool) >= 1 << 16 or max(len(s) for s in entries.values()) >= 1 << 8:
        msg = f"{name} outgrew the Mapping field widths"
        raise SystemExit(msg)
    rows = [", ".join(index[i : i + 8]) for i in range(0, len(index), 8)]
    return (
        f"constexpr Mapping k{name}[] = {{\n" + "".join(f"    {row},\n" for row in rows) + "};\n"
        + _array("char32_t", f"k{name}Pool", pool)
    )  # fmt: skip


def generate(ucd_dir: Path) -> str:
    ucd = Ucd(ucd_dir)
    flags = [flags_of(ucd, cp) for cp in range(N_CODE_POINTS)]
    block = 1 << BLOCK_SHIFT
    blocks: dict[tuple[int, ...], int] = {}
    stage1 = []
    for start in range(0, N_CODE_POINTS, block):
        stage1.append(blocks.setdefault(tuple(flags[start : start + block]), len(blocks)))
    stage2 = [f for b in blocks for f in b]
    decompositions = {
        cp: ucd.nfd_9_0(cp) for cp in range(N_CODE_POINTS) if flags[cp] & FLAGS["kDecomposes"]
    }  # fmt: skip
    lower = {cp: ucd.lower[cp] for cp in range(N_CODE_POINTS) if flags[cp] & FLAGS["kHasLower"]}
    ccc = [(cp, ucd.ccc_9_0(cp)) for cp in range(N_CODE_POINTS) if flags[cp] & FLAGS["kCombining"]]

    out = [
        "// Generated by csrc/tools/gen_unicode_tables.py from the Unicode Character Database "
        f"{ucd.version}; do not edit.\n",
        "// Regenerate: python csrc/tools/gen_unicode_tables.py --ucd /usr/share/unicode (Debian's unicode-data).\n",
        "// Which Unicode version each property follows, and why: the generator's docstring.\n",
        "// Included by csrc/core/tokenizer.cpp inside its anonymous namespace.\n\n",
        f'constexpr char kUcdVersion[] = "{ucd.version}";\n',
        f"constexpr int kBlockShift = {BLOCK_SHIFT};\n",
        "".join(f"constexpr std::uint16_t {name} = {bit};\n" for name, bit in FLAGS.items()),
        "\n// Mapped code points: kPool[offset .. offset + length) replaces cp.\n",
        "struct Mapping {\n  char32_t cp;\n  std::uint16_t offset;\n  std::uint8_t length;\n};\n",
        "struct CombiningClass {\n  char32_t cp;\n  std::uint8_t ccc;\n};\n\n",
        f"// Two-stage flags: kFlags[kBlockIndex[cp >> {BLOCK_SHIFT}] * {block} + (cp & {block - 1})].\n",
        _array("std::uint16_t", "kBlockIndex", stage1),
        _array("std::uint16_t", "kFlags", stage2),
        "\n// Full canonical decompositions (Unicode 9.0).\n",
        _mapping("Decomposition", decompositions),
        "\n// Canonical combining classes > 0 (Unicode 9.0), sorted by code point.\n",
        "constexpr CombiningClass kCombiningClass[] = {\n",
        "".join(
            "    " + ", ".join(f"{{{cp}, {c}}}" for cp, c in ccc[i : i + 10]) + ",\n" for i in range(0, len(ccc), 10)
        ),
        "};\n",
        "\n// Full lower-case mappings (UnicodeData + unconditional SpecialCasing).\n",
        _mapping("Lower", lower),
    ]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ucd", type=Path, default=Path("/usr/share/unicode"), help="UCD text files")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    args = parser.parse_args(argv)
    text = generate(args.ucd)
    if args.check:
        same = args.output.exists() and args.output.read_text(encoding="utf-8") == text
        sys.stderr.write(f"{args.output}: {'up to date' if same else 'differs from the generator output'}\n")
        return 0 if same else 1
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
