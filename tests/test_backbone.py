import torch

from conftest import randomize_output_layer
from didi.config import ModelConfig
from didi.models.dit import DiT


def test_small_preset_matches_published_layout():
    """169,627,218 parameters in 131 tensors with the MDLM/DUO names and shapes (reference-formats §1)."""
    with torch.device("meta"):
        model = DiT(ModelConfig.from_preset("small", vocab_size=50258))
    sd = model.state_dict()
    assert len(sd) == 131
    assert sum(v.numel() for k, v in sd.items() if k != "rotary_emb.inv_freq") == 169_627_218
    expected = {
        "vocab_embed.embedding": (50258, 768), "sigma_map.mlp.0.weight": (128, 256), "sigma_map.mlp.0.bias": (128,),
        "sigma_map.mlp.2.weight": (128, 128), "sigma_map.mlp.2.bias": (128,), "rotary_emb.inv_freq": (32,),
        "output_layer.norm_final.weight": (768,), "output_layer.linear.weight": (50258, 768),
        "output_layer.linear.bias": (50258,), "output_layer.adaLN_modulation.weight": (1536, 128),
        "output_layer.adaLN_modulation.bias": (1536,),
    }
    block = {"norm1.weight": (768,), "attn_qkv.weight": (2304, 768), "attn_out.weight": (768, 768),
             "norm2.weight": (768,), "mlp.0.weight": (3072, 768), "mlp.0.bias": (3072,),
             "mlp.2.weight": (768, 3072), "mlp.2.bias": (768,), "adaLN_modulation.weight": (4608, 128),
             "adaLN_modulation.bias": (4608,)}
    for i in range(12):
        expected.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_zero_init_predicts_uniform(tiny_model_config):
    model = DiT(tiny_model_config).eval()
    logits = model(torch.randint(0, 10, (2, 8)), torch.zeros(2))
    assert torch.count_nonzero(logits) == 0


def test_attention_is_bidirectional_and_uses_positions(tiny_model_config):
    model = DiT(tiny_model_config).eval()
    randomize_output_layer(model)
    x = torch.randint(0, 10, (1, 8))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 10
    # Changing the last token changes the prediction at the first position (no causal mask).
    assert not torch.allclose(model(x, 0.0)[0, 0], model(y, 0.0)[0, 0])
    # Rotary makes the model position-aware: swapping two other tokens changes position 0's output
    # (a bag-of-words attention would be invariant to it).
    x = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    swapped = x.clone()
    swapped[0, 2], swapped[0, 6] = x[0, 6], x[0, 2]
    assert not torch.allclose(model(x, 0.0)[0, 0], model(swapped, 0.0)[0, 0], atol=1e-5)


def test_soft_input_matches_hard_tokens(tiny_model_config):
    model = DiT(tiny_model_config).eval()
    randomize_output_layer(model)
    x = torch.randint(0, 11, (2, 8))
    soft = torch.nn.functional.one_hot(x, 11).float() * 1e4
    assert torch.allclose(model(x, torch.ones(2)), model(soft, torch.ones(2)), atol=1e-5)


def test_sigma_conditioning_changes_output_once_adaln_is_trained(tiny_model_config):
    model = DiT(tiny_model_config).eval()
    randomize_output_layer(model)
    x = torch.randint(0, 11, (2, 8))
    assert not torch.allclose(model(x, torch.zeros(2)), model(x, torch.full((2,), 2.0)))


def test_gradient_checkpointing_gives_same_gradients(tiny_model_config):
    torch.manual_seed(0)
    a = DiT(tiny_model_config)
    randomize_output_layer(a)
    b = DiT(tiny_model_config)
    b.load_state_dict(a.state_dict())
    b.gradient_checkpointing = True
    x = torch.randint(0, 11, (2, 8))
    a(x, 0.0).square().sum().backward()
    b(x, 0.0).square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)
