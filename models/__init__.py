"""codecflow models: pure torch modules (no Prefect, files, hub or config parsing).

`tokenizer` defines the audio tokenizer interface, `mulaw` the sample-level mu-law tokenizer,
`gpt` the nanoGPT-style language model with a KV cache and `sampling` generation from it.
"""

from models.gpt import GPT, GPTConfig, GPTOutput, KVCache
from models.mulaw import MuLawTokenizer, mulaw_decode, mulaw_encode
from models.sampling import GenerationResult, generate, sample_next
from models.tokenizer import AudioTokenizer

__all__ = [
    "AudioTokenizer",
    "MuLawTokenizer",
    "mulaw_encode",
    "mulaw_decode",
    "GPTConfig",
    "GPTOutput",
    "KVCache",
    "GPT",
    "GenerationResult",
    "sample_next",
    "generate",
]
