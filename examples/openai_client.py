"""Any OpenAI client reaches the repository's LLMs through `repolib serve`: the key is its API key.

repolib serve --port 8787 &
python examples/openai_client.py http://127.0.0.1:8787/v1 notebook.key
"""

import sys

import openai

base_url, key_file = sys.argv[1], sys.argv[2]
with open(key_file) as f:
    client = openai.OpenAI(base_url=base_url, api_key=f.read().strip())
resp = client.chat.completions.create(
    model="smollm2",
    max_tokens=24,
    temperature=0,
    messages=[{"role": "user", "content": "Say hello in five words."}],
)
print(
    f"{resp.choices[0].message.content!r} ({resp.usage.total_tokens} tokens, through repolib serve)"
)
