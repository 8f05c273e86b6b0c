"""The layer tables: complete, valid, and matching known architecture facts."""

import pytest

import lowmem_numba as ln
from lowmem_numba.bench._networks import NETWORKS, layers


@pytest.mark.parametrize("network", NETWORKS)
def test_every_layer_is_a_valid_convolution(network):
    table = layers(network)
    assert table and len({layer.name for layer in table}) == len(table)
    for layer in table:
        g = ln._geometry.make_geometry(layer.x_shape(), layer.w_shape, **layer.conv_args)
        assert g.out_height >= 1 and g.out_width >= 1


def test_known_counts_and_shapes():
    assert len(layers("alexnet")) == 5
    assert len(layers("vgg16")) == 13
    # conv1, conv2's 1x1 reduce and 3x3, and six convolutions in each of nine modules.
    assert len(layers("googlenet")) == 3 + 9 * 6
    assert len(layers("mobilenet")) == 1 + 13 * 2
    by_name = {layer.name: layer for layer in layers("googlenet")}
    assert by_name["inception3a_3x3"].w_shape == (128, 96, 3, 3)
    assert by_name["inception3a_5x5"].w_shape == (32, 16, 5, 5)
    vgg = {layer.name: layer for layer in layers("vgg16")}
    assert vgg["conv4_2"].x_shape() == (1, 512, 28, 28)
    # A network's layers chain: each VGG block ends where the next begins (after pooling).
    assert [layer.out_channels for layer in layers("vgg16")][-1] == 512
    depthwise = [layer for layer in layers("mobilenet") if layer.name.startswith("dw")]
    assert all(layer.groups == layer.in_channels == layer.out_channels for layer in depthwise)


def test_unknown_network_is_named():
    with pytest.raises(ValueError, match="unknown network 'lenet'.*alexnet"):
        layers("lenet")
