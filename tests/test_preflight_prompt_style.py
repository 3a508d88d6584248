"""A model's own prompt (task.options.prompt_style) sent the wrong way for
policy.chat_template is a config error before any stage, not when the first prompt is
built after the policy has loaded."""

import pytest

from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.preflight import check_prompt_style, preflight
from qstar_jax.stages.context import RunContext

CONFIG = "configs/smollm2_gsm_symbolic.yaml"


@pytest.mark.parametrize("style, chat, refusal", [
    ("metamath", True, "prompt_style=metamath is the model's plain-text prompt, which a chat "
                       "template would wrap in another layout: set policy.chat_template=false"),
    ("metamath", False, None)])
def test_a_models_prompt_must_go_through_the_chat_template_as_its_authors_sent_it(
        style, chat, refusal):
    config = load_config(CONFIG, [f"task.options.prompt_style={style}", "task.options.n_shot=0",
                                  f"policy.chat_template={chat}"])
    if refusal is None:
        preflight(config)
        return
    with pytest.raises(ConfigError) as raised:
        preflight(config)
    assert str(raised.value) == f"task.options.prompt_style: {refusal}"


def test_deepseek_maths_prompt_is_a_chat_turn():
    config = load_config("configs/math_deepseek_math_7b.yaml", ["policy.chat_template=false"])
    with pytest.raises(ConfigError, match="prompt_style=deepseek_math is the user turn of the "
                                          "model's chat template: set policy.chat_template=true"):
        check_prompt_style(RunContext(config=config, out=None))
