"""One adapter per provider kind, each speaking OpenAI's chat completion format to the gateway."""
