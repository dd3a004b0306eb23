"""xvlm_edge: X-VLM multi-grained vision-language models for edge devices."""
