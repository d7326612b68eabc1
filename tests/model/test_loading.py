"""How many transformer layers a model has, and which is the middle one: one rule for training and evaluation."""

from transformers import Gemma3Config, Gemma3TextConfig, LlamaConfig

from bcat.model.loading import middle_layer, num_layers


def test_layer_count_of_a_plain_and_a_composite_config():
    assert num_layers(LlamaConfig(num_hidden_layers=7)) == 7 and middle_layer(LlamaConfig(num_hidden_layers=7)) == 3
    # A multimodal config: the count is its text decoder's, not the vision tower's.
    composite = Gemma3Config(text_config=Gemma3TextConfig(num_hidden_layers=18).to_dict(),
                             vision_config={"num_hidden_layers": 4})
    assert num_layers(composite) == 18 and middle_layer(composite) == 9


def test_retrieval_defaults_to_the_layer_training_aligns():
    from bcat.evaluation.ood.suite import resolve_layer

    class Model:
        config = Gemma3Config(text_config=Gemma3TextConfig(num_hidden_layers=18).to_dict())

    assert resolve_layer(Model(), None) == middle_layer(Model.config) == 9
    assert resolve_layer(Model(), -1) == 18
