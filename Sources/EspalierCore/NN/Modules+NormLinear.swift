// Batch-norm and linear layers.

import Foundation

/// Batch norm over channels; affine optional (DARTS search uses affine = false).
public final class BatchNorm2d: Module {
    public let gamma: Parameter?
    public let beta: Parameter?
    public let runningMean: Tensor
    public let runningVar: Tensor
    public let momentum: Float
    public let eps: Float
    public let owner: Int32

    public init(_ f: ParameterFactory, name: String, channels: Int, affine: Bool = true, momentum: Float = 0.1, eps: Float = 1e-5) throws {
        self.momentum = momentum
        self.eps = eps
        (gamma, beta, runningMean, runningVar, owner) = try f.scope(name) {
            let gm = affine ? try f.make("weight", [channels], .ones, decay: true) : nil
            let bt = affine ? try f.make("bias", [channels], .zeros, decay: true) : nil
            // Each statistic under an owner of its own ("…/bn/running_mean"): its name in saved models.
            let rm = try f.scope("running_mean") { try Tensor.zeros([channels], category: .parameters, accountant: f.accountant) }
            let rv = try f.scope("running_var") { try Tensor.filled([channels], value: 1, category: .parameters, accountant: f.accountant) }
            return (gm, bt, rm, rv, f.accountant.currentOwner)
        }
    }

    public var parameters: [Parameter] { [gamma, beta].compactMap { $0 } }
    public var buffers: [Tensor] { [runningMean, runningVar] }

    public func callAsFunction(_ g: Graph, _ x: Variable) throws -> Variable {
        try g.accountant.withOwnerID(owner) {
            try g.batchNorm(x, gamma: gamma.map { g.param($0) }, beta: beta.map { g.param($0) },
                            runningMean: runningMean, runningVar: runningVar, momentum: momentum, eps: eps)
        }
    }
}

/// y = x·Wᵀ + b: weight (out, in), bias (out).
public final class Linear: Module {
    public let weight: Parameter
    public let bias: Parameter?
    public let owner: Int32

    public init(_ f: ParameterFactory, name: String, inFeatures: Int, outFeatures: Int, bias: Bool = true) throws {
        (weight, self.bias, owner) = try f.scope(name) {
            (try f.make("weight", [outFeatures, inFeatures], .uniformFanIn(inFeatures)),
             bias ? try f.make("bias", [outFeatures], .uniformFanIn(inFeatures)) : nil,
             f.accountant.currentOwner)
        }
    }

    public var parameters: [Parameter] { [weight, bias].compactMap { $0 } }

    public func callAsFunction(_ g: Graph, _ x: Variable) throws -> Variable {
        try g.accountant.withOwnerID(owner) {
            try g.linear(x, weight: g.param(weight), bias: bias.map { g.param($0) })
        }
    }
}
