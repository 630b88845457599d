"""fidelity/plan.py: the target first then the most frequent partners, moments right before a real turn of
the speaker, and only held-out sessions."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from data.chatml import split_to_fit
from data.dataset import prepare_data
from data.sessions import Session, Turn
from data.settings import DataConfig
from fidelity import EvaluationError
from fidelity.plan import EvalSettings, choose_contexts, choose_speakers, plan_evaluation

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"


def test_speakers_are_the_target_then_the_most_frequent_partners():
    turns = Counter({"Olga": 5, "Misha": 9, "Me": 2, "Igor": 5, "Kate": 1})
    assert choose_speakers(turns, "Me", 4, sessions=3) == ["Me", "Misha", "Igor", "Olga"]
    assert choose_speakers(turns, "Nobody", 2, sessions=3) == ["Misha", "Igor"]
    assert choose_speakers(turns, "Me", ["Kate", "Olga"], sessions=3) == ["Kate", "Olga"]
    with pytest.raises(EvaluationError, match=r"no turns of Lena in the held-out sessions \(3\)"):
        choose_speakers(turns, "Me", ["Lena"], sessions=3)


def test_contexts_end_right_before_a_real_turn_of_the_speaker():
    sessions = [
        Session(
            "chat",
            "personal_chat",
            i,
            [Turn("A", [f"a{i}"]), Turn("B", [f"b{i}"]), Turn("A", [f"a{i}!"]), Turn("B", [f"b{i}!"])],
        )
        for i in range(5)
    ]
    everything = choose_contexts(sessions, "A", 100, seed=0)
    assert len(everything) == 5  # A's first turns open their sessions: nothing to answer there
    for context in everything:
        session = sessions[int(context.real[0][1])]
        assert session.turns[len(context.turns)].messages == context.real
        assert context.turns == session.turns[: len(context.turns)] and context.turns[-1].speaker == "B"
    chosen = choose_contexts(sessions, "B", 4, seed=1)
    assert len(chosen) == 4 and chosen == choose_contexts(sessions, "B", 4, seed=1)
    assert len({tuple(context.real) for context in chosen}) == 4
    assert all(not context.memory for context in chosen)

    # A run with memory: each context is written after its own session's memory, as the run trained.
    remembered = choose_contexts(
        sessions, "B", 4, seed=1, memory=lambda session: [Turn("memory", [str(session.start)])]
    )
    assert [context.turns for context in remembered] == [context.turns for context in chosen]
    assert [context.memory for context in remembered] == [[Turn("memory", [context.real[0][1]])] for context in chosen]


def test_held_out_sessions_never_reach_the_training_rows(dolphin_tokenizer):
    def documents(rows) -> set[tuple[int, ...]]:
        found = set()
        for ids, document_ids, length in zip(rows.input_ids, rows.document_ids, rows.lengths):
            for document in set(document_ids[:length].tolist()):
                found.add(tuple(ids[:length][document_ids[:length] == document].tolist()))
        return found

    data = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.2))
    trained, held_out = documents(data.train_rows), documents(data.val_rows)
    assert len(data.val_sessions) >= 5 and held_out and not trained & held_out
    for session in data.val_sessions:
        for piece in split_to_fit(session.turns, dolphin_tokenizer, 256)[0]:
            assert tuple(piece.ids) in held_out and tuple(piece.ids) not in trained
    plan = plan_evaluation(data, EvalSettings(contexts=100))
    for contexts in plan.contexts.values():
        for context in contexts:
            assert any(
                session.turns[: len(context.turns) + 1] == [*context.turns, Turn(context.speaker, context.real)]
                for session in data.val_sessions
            )


def test_nothing_held_out_is_refused(dolphin_tokenizer):
    data = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0))
    with pytest.raises(EvaluationError, match="no held-out sessions to evaluate on"):
        plan_evaluation(data, EvalSettings())


def test_turns_are_written_48_at_once_on_a_cpu_16_on_a_gpu_unless_sample_batch_says():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert (EvalSettings().turns_at_once(cpu), EvalSettings().turns_at_once(gpu)) == (48, 16)
    assert EvalSettings(sample_batch=5).turns_at_once(cpu) == EvalSettings(sample_batch=5).turns_at_once(gpu) == 5
