"""The conversation templates of the original LLaVA code, written as chat templates.

From llava/conversation.py (haotian-liu/LLaVA; microsoft/LLaVA-Med and heliossun/STLLaVA-Med carry
the same): each takes string or list content, and an image part becomes "<image>\n" before the
text, as the original code prepends DEFAULT_IMAGE_TOKEN + "\n" to the first question
(llava/eval/model_vqa.py). ``stmed convert`` writes one of them into the converted folder.
"""

_TEXT = ("{% if message['content'] is string %}{% set text = message['content'] %}"
         "{% else %}{% set acc = namespace(v='') %}{% for part in message['content'] %}"
         "{% if part['type'] == 'image' %}{% set acc.v = acc.v + '<image>\\n' %}"
         "{% elif part['type'] == 'text' %}{% set acc.v = acc.v + part['text'] %}{% endif %}"
         "{% endfor %}{% set text = acc.v %}{% endif %}")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# conv_vicuna_v1: SeparatorStyle.TWO, sep " ", sep2 "</s>":
#   "{system} USER: <image>\n{q} ASSISTANT: {a}</s>USER: ..." and the prompt ends "ASSISTANT:"
VICUNA_V1 = (
    "{% set ns = namespace(system='" + VICUNA_SYSTEM.replace("'", "\\'") + "') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}" + _TEXT +
    "{% set ns.system = text %}{% endif %}{% endfor %}"
    "{{ ns.system + ' ' }}"
    "{% for message in messages %}" + _TEXT +
    "{% if message['role'] == 'user' %}{{ 'USER: ' + text + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + text + '</s>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# conv_mistral_instruct: SeparatorStyle.LLAMA_2, system "", sep "", sep2 "</s>":
#   "[INST] <image>\n{q} [/INST] {a} </s>[INST] ..." (a system text goes in <<SYS>> in the first turn)
MISTRAL_INSTRUCT = (
    "{% set ns = namespace(system='', first=true) %}"
    "{% for message in messages %}" + _TEXT +
    "{% if message['role'] == 'system' %}{% set ns.system = text %}"
    "{% elif message['role'] == 'user' %}"
    "{% if ns.first and ns.system %}{% set text = '<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n' + text %}{% endif %}"
    "{% set ns.first = false %}{{ '[INST] ' + text + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + text + ' </s>' }}{% endif %}"
    "{% endfor %}"
)
TEMPLATES = {"vicuna_v1": VICUNA_V1, "mistral_instruct": MISTRAL_INSTRUCT}
# The template by model_type: Mistral's [INST] format for llava_mistral. microsoft/LLaVA-Med's
# llava/eval/model_vqa.py defaults to --conv-mode vicuna_v1 whatever the model; --chat-template vicuna_v1
# reproduces that eval. Its process_images pads to square (image_aspect_ratio "pad") there too.
DEFAULT_TEMPLATE = {"llava_llama": "vicuna_v1", "llava": "vicuna_v1", "llava_mistral": "mistral_instruct"}
