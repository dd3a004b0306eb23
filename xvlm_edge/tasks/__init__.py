"""The user-facing tasks, backend-agnostic: each calls graphs through a `Runtime` and post-processes.

Functions here take tensors (pixels already encoded, texts already tokenised), so parity tests can feed
the official fixtures directly; `xvlm_edge.api.Model` adds image loading, text cleaning and tokenising.
"""
