// The modules that bring a cell's inputs to its C channels and resolution: ReLU-conv-BN, and the
// factorized reduce that halves H and W. Not the cell's ops (those are plugins, MixedEdge.swift).

import EspalierCore

/// ReLU → conv k×k → BN (the cell preprocessing when sizes match).
final class ReLUConvBN: Module {
    let conv: Conv2d, bn: BatchNorm2d
    init(_ f: ParameterFactory, name: String, cIn: Int, cOut: Int, kernel: Int = 1, stride: Int = 1, padding: Int = 0, affine: Bool) throws {
        (conv, bn) = try f.scope(name) {
            (try Conv2d(f, name: "conv", cIn: cIn, cOut: cOut, kernel: kernel, stride: stride, padding: padding),
             try BatchNorm2d(f, name: "bn", channels: cOut, affine: affine))
        }
    }
    var parameters: [Parameter] { conv.parameters + bn.parameters }
    var buffers: [Tensor] { bn.buffers }
    /// relu(x) is read inside the 1×1 convolution (Graph.conv2d's reluInput): never stored.
    func callAsFunction(_ g: Graph, _ x: Variable) throws -> Variable { try bn(g, try conv(g, x, reluInput: true)) }
}

/// ReLU → two 1×1 stride-2 convs (the second on x[:, :, 1:, 1:]) → concat → BN: halves H and W.
final class FactorizedReduce: Module {
    let conv1: Conv2d, conv2: Conv2d, bn: BatchNorm2d
    init(_ f: ParameterFactory, name: String, cIn: Int, cOut: Int, affine: Bool) throws {
        guard cOut % 2 == 0 else { throw EspalierError.config("FactorizedReduce needs an even channel count, got \(cOut)") }
        (conv1, conv2, bn) = try f.scope(name) {
            (try Conv2d(f, name: "conv1", cIn: cIn, cOut: cOut / 2, kernel: 1, stride: 2),
             try Conv2d(f, name: "conv2", cIn: cIn, cOut: cOut / 2, kernel: 1, stride: 2),
             try BatchNorm2d(f, name: "bn", channels: cOut, affine: affine))
        }
    }
    var parameters: [Parameter] { conv1.parameters + conv2.parameters + bn.parameters }
    var buffers: [Tensor] { bn.buffers }
    func callAsFunction(_ g: Graph, _ x: Variable) throws -> Variable {
        // Both read relu(x) inside their gathers (never stored); conv2 reads relu(x)[:, :, 1:, 1:]
        // in place (the crop is never stored either).
        let a = try conv1(g, x, reluInput: true)
        let b = try conv2(g, x, window: ConvWindow(top: 1, left: 1, height: x.shape[2] - 1, width: x.shape[3] - 1), reluInput: true)
        return try bn(g, try g.concatChannels([a, b]))
    }
}

/// Conforming modules can be a cell's input preprocessing.
protocol CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable }
extension ReLUConvBN: CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable { try self(g, x) } }
extension FactorizedReduce: CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable { try self(g, x) } }
