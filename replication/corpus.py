"""
The replication's pretraining corpus, written as one JSONL file of documents for train.py's text task
(`--task text --text_files corpus.jsonl`, data.read_documents; a row's "text" is one document):

  python -m replication.corpus --data_dir $DATA --out out-replication/corpus.jsonl

The replication corpus (fixed here, so that every machine builds the same one from the same files):
  English  WikiText-103 test, one document per article (" = Title = " lines start them); WikiText-103
           validation stays out: it is the forgetting probe's held-out data
  English  GSM8K train, one document per problem: question, blank line, answer
  code     the Python standard library of the running interpreter (sysconfig's "stdlib"), every .py file
           outside test folders, site-packages and the generated tables (encodings/: codec byte maps;
           pydoc_data/: help text dumped into one string), sorted by path; so it depends on the Python
           version. The tables were 9.7% of the first recipe and its base sampled hex rows.
Nothing of NL-RX (the fine-tuning task) is in it.

  python -m replication.corpus --code_out out-replication/held-out-code.txt

writes the forgetting probe's held-out code text instead: Python the base never saw, torch's torch/nn/modules/
sources (site-packages, which the corpus leaves out), sorted by name and joined; requirements.txt pins torch, so
every machine that installs it writes the same text.
"""

import os
import sys
import sysconfig

from configurator import configure, setting_keys
from harness.errors import ConfigError, MissingInput, parse_json, read_text
from harness.outputs import write_jsonl, write_whole
from harness.runtime import run_main

data_dir = ""  # the folder holding wikitext/wikitext-103-raw/ and gsm8k/openai/ in their release layouts
out = ""  # the JSONL file to write
code_out = ""  # instead: the held-out code text to write (torch's nn/modules sources)
KEYS = setting_keys(globals())

EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__",
                 "encodings", "pydoc_data"}  # the last two: generated tables, not code


def wikitext_articles(path):
    """WikiText raw text split into articles: a line ' = Title = ' (one '=' each side) starts one."""
    articles, current = [], []
    for line in read_text(path, "WikiText file").split("\n"):
        if line.startswith(" = ") and line.rstrip().endswith(" =") and not line.startswith(" = = "):
            if any(x.strip() for x in current):
                articles.append("\n".join(current).strip("\n"))
            current = []
        current.append(line)
    if any(x.strip() for x in current):
        articles.append("\n".join(current).strip("\n"))
    return articles


def stdlib_files():
    """The running interpreter's standard library .py files, test folders, site-packages and the generated
    tables left out (EXCLUDED_DIRS)."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS)
        files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    return sorted(files)


def held_out_code_files():
    """The installed torch's torch/nn/modules/*.py, sorted: code of the base's kind, none of it in the corpus."""
    import torch
    root = os.path.join(os.path.dirname(torch.__file__), "nn", "modules")
    return sorted(os.path.join(root, n) for n in os.listdir(root) if n.endswith(".py"))


def replication_documents(data_root):
    """The replication corpus (see the top of this file) from a folder holding wikitext/wikitext-103-raw/
    and gsm8k/openai/ in their release layouts."""
    wikitext = os.path.join(data_root, "wikitext", "wikitext-103-raw", "wiki.test.raw")
    gsm8k = os.path.join(data_root, "gsm8k", "openai", "train.jsonl")
    for path in (wikitext, gsm8k):
        if not os.path.exists(path):
            raise MissingInput(f"the replication corpus needs {path} (--data_dir is the folder of the release files)")
    documents = wikitext_articles(wikitext)
    for i, line in enumerate(read_text(gsm8k, "GSM8K file").splitlines(), start=1):
        row = parse_json(line, gsm8k, i)
        documents.append(f"{row['question']}\n\n{row['answer']}")
    documents += [read_text(path, "stdlib file") for path in stdlib_files()]
    return [d for d in documents if d.strip()]


def write_corpus(documents, path):
    """One {"text": document} row per line (train.py --task text reads it), written whole."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_jsonl(path, ({"text": d} for d in documents))


def main(argv):
    configure(globals(), KEYS, argv)
    if code_out:
        import torch
        text = "".join(read_text(path, "torch source file") for path in held_out_code_files())
        write_whole(code_out, text)
        print(f"held-out code: torch {torch.__version__} torch/nn/modules, {len(text):,} characters -> {code_out}")
        return
    if not data_dir or not out:
        raise ConfigError("pass --data_dir (the release files) and --out (the JSONL file to write)")
    documents = replication_documents(data_dir)
    write_corpus(documents, out)
    print(f"replication corpus: WikiText-103 test + GSM8K train + the Python {sys.version.split()[0]} standard "
          f"library, {len(documents)} documents -> {out}")


if __name__ == "__main__":
    run_main("replication/corpus.py", main, sys.argv[1:], lambda: 0)
