"""The chat format of Qwen2.5-VL as a Jinja template, for tokenizers we build ourselves.

Our own renderer (:mod:`pixelreasoner.render`) does not go through Jinja: it builds the same
text piece by piece so that it knows which characters the model generated. This template is
saved with tiny models so that plain transformers (``apply_chat_template``) and servers such as
``transformers serve`` render conversations exactly as our renderer does; a test checks the two
agree on the protocol fixtures.

Format: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, a default system message
when the first message is not one, images as ``<|vision_start|><|image_pad|><|vision_end|>``
and videos as ``<|vision_start|><|video_pad|><|vision_end|>`` at their place in the content, and
``<|im_start|>assistant\\n`` as the generation prompt.
"""

DEFAULT_SYSTEM = "You are a helpful assistant."

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}" + IMAGE_PLACEHOLDER + ""
    "{% elif part['type'] == 'video' or 'video' in part %}" + VIDEO_PLACEHOLDER + ""
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
