"""Which mesh a stage trains Q̂ on: a spy around ``train_q_model`` that passes every call
through."""

from qstar_jax.qvalue.train import train_q_model


def meshes_passed_to_train_q_model(monkeypatch, module) -> list:
    """The ``mesh`` of each call ``module`` makes to ``train_q_model`` (None: none), as
    the calls happen."""
    passed = []

    def spy(*args, mesh=None, **kwargs):
        passed.append(mesh)
        return train_q_model(*args, mesh=mesh, **kwargs)
    monkeypatch.setattr(module, "train_q_model", spy)
    return passed
