"""Text conditioning: tokenizers (CLIP BPE, BERT WordPiece, word-level) and prompt encoding.

Every tokenizer is a fixed-length HF ``tokenizers.Tokenizer`` (no torch or transformers needed);
``tokenize(tokenizer, prompts)`` gives int32 [N, 77]. The Flax text encoders live in
``ldm_jax.models.clip_text`` / ``ldm_jax.models.bert_text`` and load through
``ldm_jax.convert.text_encoders`` (folders) / ``ldm_jax.convert.text_checkpoint`` (single files).

    from ldm_jax import text
    tok = text.load_tokenizer("sd/tokenizer")          # or text.load_tokenizer() for SD 1.x CLIP
    ids = text.tokenize(tok, ["a photo of a cat"])     # int32 [1, 77]
    enc = text.load_prompt_encoder("sd")               # tokenizer/ + text_encoder/
    context = text.encode_prompts(enc, ["a photo of a cat"])  # float32 [1, 77, 768]
    text.save_prompt_encoder(enc, "folder")            # tokenizer/ + text_encoder/ (or bert/)
"""

from ldm_jax.text.clip_tokenizer import (SD1_PAD_TOKEN, SD2_PAD_TOKEN,
                                         clip_bpe_tokenizer, clip_vocab_from_bpe, load_clip_tokenizer)
from ldm_jax.text.loading import TOKENIZER_KINDS, load_tokenizer, tokenizer_kind
from ldm_jax.text.prompts import (PromptEncoder, encode_prompts, load_prompt_encoder,
                                  prompt_encoder_from_checkpoint, prompt_ids)
from ldm_jax.text.saving import save_prompt_encoder
from ldm_jax.text.token_ids import fixed_length, tokenize
from ldm_jax.text.word_level import UNKNOWN_POLICIES, train_word_level, word_level_tokenizer
from ldm_jax.text.wordpiece import load_wordpiece_tokenizer, wordpiece_tokenizer
