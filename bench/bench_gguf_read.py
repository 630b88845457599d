"""Reading a GGUF file's header: twin's model.gguf.file against the gguf package's GGUFReader (which
twin used before), in time and peak memory, each in a fresh process.

    python bench/bench_gguf_read.py [--tokens 3000000] [--timeout 60] [FILE ...]

Without FILE it writes the hostile case of issue 25: a tiny model whose GGUF claims --tokens tokens
(3M: an 82 MB file), which twin must refuse fast and in little memory. With FILEs it reads those
(real models: twin must read them as GGUFReader does, only faster). A side that runs past --timeout
seconds is stopped and shown as such.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Each side imports first, then reports the seconds of the read alone and its peak memory above the
# imports' (the parent adds the whole process's wall time and peak, which a side stopped early leaves).
IMPORTS = "import time, gguf\nfrom model.bpe import tokenizer_from_gguf\nfrom model.gguf.file import GGUFFile\n"
BASELINE = (
    "rss = lambda: int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024\n"
    "before, start = rss(), time.perf_counter()\n"
)
REPORT = "print(f'read in {time.perf_counter() - start:.2f} s, +{rss() - before} MB over the imports', outcome)"
READERS = {
    "GGUFReader": "reader = gguf.GGUFReader(path); [field.contents() for field in reader.fields.values()]\n"
    "outcome = 'read'\n",
    "twin": "try:\n    tokenizer_from_gguf(path); outcome = 'read'\nexcept Exception as error:\n"
    "    outcome = f'refused: {error}'\n",
}


def many_tokens_gguf(folder: Path, tokens: int) -> Path:
    """A 2-layer llama with a 256-row embedding whose vocabulary has `tokens` tokens."""
    import gguf
    import numpy as np
    import torch

    from model.gguf import gguf_tensor_names
    from model.transformer import ModelConfig, Transformer

    config = ModelConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        model_type="llama",
        tie_word_embeddings=True,
    )
    path = folder / f"{tokens}-tokens.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2), writer.add_context_length(512), writer.add_embedding_length(64)
    writer.add_feed_forward_length(128), writer.add_head_count(4), writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"token{i}" for i in range(tokens)])
    writer.add_token_merges(["t o"])
    with torch.device("meta"):
        model = Transformer(config)
    for name, gguf_name in gguf_tensor_names(model).items():
        writer.add_tensor(gguf_name, np.zeros(tuple(model.get_parameter(name).shape), np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
    writer.close()
    return path


def measure(code: str, path: Path, timeout: float) -> str:
    """Seconds and peak resident memory (VmHWM, read while it runs) of a fresh process that runs `code`."""
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r}); path = {str(path)!r}\n{IMPORTS}{BASELINE}{code}{REPORT}"
    start, peak_kb = time.perf_counter(), 0
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    while process.poll() is None and time.perf_counter() - start < timeout:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak_kb = max(
                [peak_kb, *(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))]
            )
        except (OSError, ValueError):  # it ended between the poll and the read
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if process.poll() is None:
        process.kill()
        outcome = f"stopped after {timeout:.0f} s, still reading"
    else:
        outcome = (process.stdout.read().strip() or "no output").splitlines()[-1][:150]
    process.wait()
    return f"process {seconds:6.2f} s, peak RSS {peak_kb / 1024:5.0f} MB: {outcome}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="GGUF files to read (default: the 3M-token case)")
    parser.add_argument("--tokens", type=int, default=3_000_000, help="tokens of the written case (default 3000000)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds before a side is stopped (default 60)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = args.files or [many_tokens_gguf(Path(folder), args.tokens)]
        for path in files:
            print(f"{path.name} ({path.stat().st_size / 1e6:.0f} MB)")
            for name in ("twin", "GGUFReader"):
                print(f"  {name:10} {measure(READERS[name], path, args.timeout)}")


if __name__ == "__main__":
    main()
