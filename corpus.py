"""
Plain text for pretraining a diffusion LM from scratch with LLaDA's own objective (the `text` task of
train.py): every position maskable, one masking rate t ~ U(0, 1] per sequence, no JEPA term.

  --text_files a.txt,dir/,c.jsonl --read_documents--> documents (a file is one; a .jsonl row's "text" is one)
  --text_recipe replication       --replication_documents--> the fixed corpus of the small-scale replication
  documents --train_tokenizer (byte-level BPE; EOS = PAD, mask, BOS)--> tokenizer
  documents --pack--> doc1 EOS doc2 EOS ... cut into max_len-token examples; the last one keeps the
                      remainder (shorter, padded by collate); nothing is dropped

The replication corpus (fixed here, so that every machine builds the same one from the same files):
  English  WikiText-103 test, one document per article (" = Title = " lines start them); WikiText-103
           validation stays out: it is the forgetting probe's held-out data
  English  GSM8K train, one document per problem: question, blank line, answer
  code     the Python standard library of the running interpreter (sysconfig's "stdlib"), every .py file
           outside test folders, site-packages and the generated tables (encodings/: codec byte maps;
           pydoc_data/: help text dumped into one string), sorted by path; so it depends on the Python
           version. The tables were 9.7% of the first recipe and its base sampled hex rows (issue 22).
Nothing of NL-RX (the fine-tuning task) is in it.
"""

import os
import sysconfig

from configurator import InputError, MissingInput, parse_json, read_text

TEXT_SUFFIXES = (".txt", ".md", ".py", ".raw", ".rst")
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__",
                 "encodings", "pydoc_data"}  # the last two: generated tables, not code


def read_documents(paths):
    """The documents of files and folders (folders: every text file below, sorted). A text file is one
    document; a .jsonl file gives one per row (its "text" field)."""
    documents = []
    for path in paths:
        if os.path.isdir(path):
            files = sorted(os.path.join(root, f) for root, dirs, names in os.walk(path) for f in names
                           if f.endswith(TEXT_SUFFIXES + (".jsonl",)))
            documents += read_documents(files)
        elif path.endswith(".jsonl"):
            for i, line in enumerate(read_text(path, "text file").splitlines(), start=1):
                row = parse_json(line, path, i) if line.strip() else None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise InputError(f"{path}:{i}: expected a JSON object with a \"text\" field")
                documents.append(row["text"])
        else:
            documents.append(read_text(path, "text file"))
    return [d for d in documents if d.strip()]


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


def pack(documents, tokenizer, max_len):
    """Training examples of at most max_len tokens: the documents' ids joined with EOS after each, cut into
    consecutive chunks; the last chunk keeps the remainder. Every token is maskable (no prompt)."""
    eos = tokenizer.eos_token_id
    stream = []
    for text in documents:
        stream += tokenizer.encode(text, add_special_tokens=False) + [eos]
    return [{"prompt_ids": [], "response_ids": stream[i:i + max_len], "packed": True}
            for i in range(0, len(stream), max_len)]
