"""Postgres character set names: the server's own spelling of a name, and a Python codec for it.

A pooler relays SQL as bytes, in whatever ``client_encoding`` the session uses (LATIN1, EUC_JP,
SJIS...). It only needs the text to *look* at it (pin detection), so :func:`decode_sql` never
fails: what the codec cannot read becomes U+FFFD, which no SQL keyword or identifier pattern
matches, and the bytes themselves go to the server untouched (the server reports bad bytes,
as it would direct).
"""

from __future__ import annotations

import codecs
import re

# Canonical names (src/common/encnames.c, pg_enc2name_tbl) -> Python codec. Where Python has
# no codec (EUC_TW, MULE_INTERNAL) or none is needed (SQL_ASCII: bytes as they come) latin-1
# is used: those encodings keep ASCII bytes ASCII, so keywords, quotes and ';' read right.
_CODECS = {
    "SQL_ASCII": "latin-1", "UTF8": "utf-8", "MULE_INTERNAL": "latin-1",
    "EUC_JP": "euc_jp", "EUC_CN": "gb2312", "EUC_KR": "euc_kr", "EUC_TW": "latin-1",
    "EUC_JIS_2004": "euc_jis_2004",
    "LATIN1": "iso8859-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13", "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866", "WIN874": "cp874", "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252",
    "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258", "KOI8R": "koi8-r", "KOI8U": "koi8-u",
    # Client-only encodings whose second bytes can fall in the ASCII range: these need their
    # real codec, or a trailing byte would read as a letter or a backslash.
    "SJIS": "cp932", "SHIFT_JIS_2004": "shift_jis_2004", "BIG5": "cp950", "GBK": "gbk", "UHC": "cp949",
    "GB18030": "gb18030", "JOHAB": "johab",
}  # fmt: skip

# Aliases Postgres accepts (pg_encname_tbl), after its own cleaning: lower case, letters and
# digits only (so 'utf-8', "'UTF8'", 'euc_jp' and 'ISO-8859-1' all resolve).
_ALIASES = {
    "abc": "WIN1258", "alt": "WIN866", "big5": "BIG5", "euccn": "EUC_CN", "eucjis2004": "EUC_JIS_2004",
    "eucjp": "EUC_JP", "euckr": "EUC_KR", "euctw": "EUC_TW", "gb18030": "GB18030", "gbk": "GBK",
    "iso88591": "LATIN1", "iso885910": "LATIN6", "iso885913": "LATIN7", "iso885914": "LATIN8",
    "iso885915": "LATIN9", "iso885916": "LATIN10", "iso88592": "LATIN2", "iso88593": "LATIN3",
    "iso88594": "LATIN4", "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6", "iso88597": "ISO_8859_7",
    "iso88598": "ISO_8859_8", "iso88599": "LATIN5", "johab": "JOHAB", "koi8": "KOI8R", "koi8r": "KOI8R",
    "koi8u": "KOI8U", "mskanji": "SJIS", "muleinternal": "MULE_INTERNAL", "shiftjis": "SJIS",
    "shiftjis2004": "SHIFT_JIS_2004", "sjis": "SJIS", "sqlascii": "SQL_ASCII", "tcvn": "WIN1258",
    "tcvn5712": "WIN1258", "uhc": "UHC", "unicode": "UTF8", "utf8": "UTF8", "vscii": "WIN1258",
    "win": "WIN1251", "win866": "WIN866", "win874": "WIN874", "win932": "SJIS", "win936": "GBK",
    "win949": "UHC", "win950": "BIG5", "windows866": "WIN866", "windows874": "WIN874",
    "windows932": "SJIS", "windows936": "GBK", "windows949": "UHC", "windows950": "BIG5",
}  # fmt: skip
_ALIASES.update({f"latin{n}": f"LATIN{n}" for n in range(1, 11)})
_ALIASES.update({f"win{n}": f"WIN{n}" for n in range(1250, 1259)})
_ALIASES.update({f"windows{n}": f"WIN{n}" for n in range(1250, 1259)})
_NOT_ALNUM = re.compile(r"[^0-9a-z]")


def canonical_name(name: str) -> str | None:
    """The server's spelling of an encoding name (``'utf-8'`` -> ``'UTF8'``); None if unknown."""
    return _ALIASES.get(_NOT_ALNUM.sub("", name.lower()))


def python_codec(name: str) -> str:
    """A Python codec that reads text in the Postgres encoding ``name`` (any spelling).

    Unknown names get latin-1: every byte maps to one character and ASCII stays ASCII.
    """
    codec = _CODECS.get(canonical_name(name) or "", "latin-1")
    codecs.lookup(codec)  # every entry above exists in CPython; fail loudly here if not
    return codec


def decode_sql(raw: bytes, codec: str) -> str:
    """SQL text for inspection only: never raises; unreadable bytes become U+FFFD."""
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        return raw.decode(codec, errors="replace")
