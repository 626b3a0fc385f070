"""GRPO and PPO take the same first optimizer steps as before the online half was redesigned
(issue 17): the same loss, gradient norm and gradients, in five set-ups that between them use every
part of the experience path (scripted and sampled completions, a KL term and a reference copy, an
old-log-prob pass, masked truncated completions, RLOO, Dr. GRPO, GSPO, PPO's adaptive KL, missing-EOS
penalty, whitening, two critic layouts, mini-batches over epochs, and generate()/step()).

RECORDED was written by ``tests/algorithms/online_reference_steps.py`` as it stood in commit
273da4d (branch ``online``), run on the code of commit ee8407a (main, before the redesign) with
``OMP_NUM_THREADS=1 python tests/algorithms/online_reference_steps.py out.json`` on an AVX-512 CPU;
1 and 2 threads gave identical numbers. Per step: the logged loss and grad_norm, the norm of all
gradients, and per watched parameter ``[norm, sum, first value]`` of its gradient.

On that machine the redesigned code reproduces every number bit for bit (the operations are the
same, in the same order), with 1 and 2 threads, and under ``ATEN_CPU_CAPABILITY=avx2`` it
reproduces the old code's AVX2 numbers bit for bit too. The comparison still allows 1e-5 of each quantity's own scale, because
``ATEN_CPU_CAPABILITY=avx2`` kernels move the same computation by up to 1.5e-4 of the smallest
entries (a first gradient value of 9e-6 against its parameter's gradient norm of 0.2), i.e. far
below 1e-5 of the scale: a parameter's values are compared against its gradient norm, the losses
and norms against max(1, |value|).
"""

from __future__ import annotations

import pytest
from online_reference_steps import run_case

RECORDED = {
    "grpo_scripted": [
        {'loss': 0.7813358306884766, 'grad_norm': 5.313900947570801, 'total_norm': 5.313900947570801, 'model.model.embed_tokens.weight': [3.807936906814575, 0.10120248794555664, 0.17134325206279755], 'model.model.layers.0.self_attn.q_proj.weight': [0.022784069180488586, 0.008603288792073727, -0.00022847106447443366], 'model.model.layers.1.mlp.down_proj.weight': [0.36727944016456604, -0.16987720131874084, -0.00021979064331389964]},
        {'loss': 0.6419386496910682, 'grad_norm': 0.42696279287338257, 'total_norm': 0.42696279287338257, 'model.model.embed_tokens.weight': [0.3282555937767029, 0.13882485032081604, 0.02910781279206276], 'model.model.layers.0.self_attn.q_proj.weight': [0.001675840001553297, -0.0005539789563044906, -1.1936222108488437e-06], 'model.model.layers.1.mlp.down_proj.weight': [0.028143271803855896, 0.01965789683163166, -0.00025664191343821585]},
    ],
    "grpo_sampled": [
        {'loss': -1.9868215517249155e-08, 'grad_norm': 5.666317462921143, 'total_norm': 5.666317462921143, 'model.model.embed_tokens.weight': [4.413515567779541, -6.26674222946167, -0.0006054292898625135], 'model.model.layers.0.self_attn.q_proj.weight': [0.026610128581523895, -0.03189229220151901, -6.634045712416992e-05], 'model.model.layers.1.mlp.down_proj.weight': [0.48332569003105164, -0.46074923872947693, 0.0020343679934740067]},
        {'loss': -0.46098801493644714, 'grad_norm': 3.1674604415893555, 'total_norm': 3.1674604415893555, 'model.model.embed_tokens.weight': [2.4155828952789307, 0.9363998174667358, -0.0011059268144890666], 'model.model.layers.0.self_attn.q_proj.weight': [0.012841721996665001, -0.0068718502297997475, -0.0002437922084936872], 'model.model.layers.1.mlp.down_proj.weight': [0.24111033976078033, 0.07111899554729462, 0.00011614985851338133]},
    ],
    "ppo_scripted": [
        {'loss': 0.8180319922310966, 'grad_norm': 6.210010528564453, 'total_norm': 6.210010528564453, 'model.model.embed_tokens.weight': [4.819812774658203, 1.512818455696106, 0.2940954864025116], 'model.model.layers.0.self_attn.q_proj.weight': [0.035253532230854034, 0.026432901620864868, -0.0002570109791122377], 'model.model.layers.1.mlp.down_proj.weight': [0.5164008736610413, 0.05185061693191528, 0.0012952843680977821], 'critic.head.weight': [1.409464716911316, -2.1516168117523193, -0.07009591162204742], 'critic.backbone.layers.0.self_attn.q_proj.weight': [0.0, 0.0, 0.0]},
        {'loss': -0.04640670120716095, 'grad_norm': 3.6279125213623047, 'total_norm': 3.6279125213623047, 'model.model.embed_tokens.weight': [2.3993942737579346, -4.258998394012451, 0.11308418214321136], 'model.model.layers.0.self_attn.q_proj.weight': [0.013133877888321877, -0.007822619751095772, 0.0004162765108048916], 'model.model.layers.1.mlp.down_proj.weight': [0.18986476957798004, 0.01378781720995903, 0.00015469628851860762], 'critic.head.weight': [1.6600313186645508, -1.1426019668579102, 0.16378353536128998], 'critic.backbone.layers.0.self_attn.q_proj.weight': [0.0005669732927344739, 0.00046908363583497703, -8.723740393179469e-06]},
    ],
    "ppo_sampled": [
        {'loss': 2.7065216700236, 'grad_norm': 3.647878885269165, 'total_norm': 3.647878885269165, 'model.model.embed_tokens.weight': [1.1351704597473145, -0.024733811616897583, -0.0005115444655530155], 'model.model.layers.0.self_attn.q_proj.weight': [0.007297470699995756, 0.00262812920846045, -3.847252082778141e-05], 'model.model.layers.1.mlp.down_proj.weight': [0.12429620325565338, 0.07640272378921509, -0.00036371490568853915], 'critic.head.weight': [3.2644333839416504, -1.4304580688476562, 0.1444140374660492]},
        {'loss': 2.552879969278971, 'grad_norm': 4.293495178222656, 'total_norm': 4.293495178222656, 'model.model.embed_tokens.weight': [0.6427593231201172, -0.326846718788147, -7.332244422286749e-05], 'model.model.layers.0.self_attn.q_proj.weight': [0.003342607757076621, -0.0013171823229640722, -2.289058465976268e-05], 'model.model.layers.1.mlp.down_proj.weight': [0.05997201427817345, 0.04360485076904297, -0.0003618384071160108], 'critic.head.weight': [4.159677982330322, -6.511602878570557, 0.16196931898593903]},
    ],
    "ppo_step_api": [
        {'loss': -0.6262964248657227, 'grad_norm': 2.956730604171753, 'total_norm': 2.956730604171753, 'model.model.embed_tokens.weight': [2.31111478805542, -1.7939064502716064, -0.00043863049359060824], 'model.model.layers.0.self_attn.q_proj.weight': [0.012415303848683834, 0.016190312802791595, 0.00014494995411951095], 'model.model.layers.1.mlp.down_proj.weight': [0.259694904088974, 0.2474839687347412, -0.004475166089832783], 'critic.head.weight': [0.6787806153297424, -0.36186331510543823, 0.06806639581918716], 'critic.backbone.layers.0.self_attn.q_proj.weight': [0.0, 0.0, 0.0]},
        {'loss': 0.7305459976196289, 'grad_norm': 2.866053819656372, 'total_norm': 2.866053819656372, 'model.model.embed_tokens.weight': [2.1636083126068115, -2.086618185043335, -0.0015161542687565088], 'model.model.layers.0.self_attn.q_proj.weight': [0.013379182666540146, 0.0023961225524544716, 0.00017340794147457927], 'model.model.layers.1.mlp.down_proj.weight': [0.20737279951572418, -0.03534515202045441, 0.0005658565787598491], 'critic.head.weight': [0.1380280703306198, 0.03670765459537506, 0.03457748144865036], 'critic.backbone.layers.0.self_attn.q_proj.weight': [7.76945598772727e-05, 9.880720608634874e-05, -4.256260979218496e-07]},
    ],
}


def _close(actual: float, expected: float, scale: float, what: str) -> None:
    assert abs(actual - expected) <= 1e-5 * scale, f"{what}: {actual!r} != {expected!r} (scale {scale:.3g})"


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_first_steps_equal_the_recorded_ones(case, tmp_path):
    result = run_case(case, tmp_path)
    recorded = RECORDED[case]
    assert len(result["loss"]) == len(recorded)
    for step, expected in enumerate(recorded):
        grads = result["grads"][step]
        for name, actual in (("loss", result["loss"][step]), ("grad_norm", result["grad_norm"][step]), ("total_norm", grads["total_norm"])):
            _close(actual, expected[name], max(1.0, abs(expected[name])), f"{case} step {step + 1} {name}")
        watched = {name for name in expected if name not in ("loss", "grad_norm", "total_norm")}
        assert watched == set(grads) - {"total_norm"}, f"{case}: gradients of other parameters"
        for name in watched:
            norm, total, first = expected[name]
            got = grads[name]
            for label, a, e in (("norm", got["norm"], norm), ("sum", got["sum"], total), ("first", got["first"][0], first)):
                _close(a, e, norm, f"{case} step {step + 1} {name} {label}")
