// Optimisers (SGD with momentum and weight decay, Adam), gradient-norm clipping and the cosine
// learning-rate schedule, with PyTorch's update rules so results can be compared with the
// reference code. Every gradient and every state buffer is allocated when the optimiser is
// made — before any step — so a step never allocates, and a budget failure leaves nothing half done.

import Foundation

public protocol Optimizer: AnyObject {
    var parameters: [Parameter] { get }
    var learningRate: Float { get set }
    /// Applies one update from the current gradients.
    func step()
    /// The state buffers, in a fixed order (for checkpoints).
    var stateTensors: [Tensor] { get }
    var stepCount: Int { get set }
}

extension Optimizer {
    public func zeroGrad() { for p in parameters { p.zeroGrad() } }
}

/// SGD: d = g + wd·p; buf = m·buf + d; p −= lr·buf   (PyTorch, dampening 0, no Nesterov).
public final class SGD: Optimizer {
    public private(set) var parameters: [Parameter]
    public var learningRate: Float
    public let momentum: Float
    public let weightDecay: Float
    public var stepCount = 0
    /// Momentum buffers, same shapes as the parameters (nil without momentum).
    public private(set) var buffers: [Tensor?]

    public init(parameters: [Parameter], learningRate: Float, momentum: Float = 0.9, weightDecay: Float = 0) throws {
        self.parameters = parameters
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        for p in parameters { try p.ensureGrad() }
        buffers = try parameters.map { p in
            momentum == 0 ? nil : try Tensor.zeros(p.shape, category: .optimizerState, accountant: p.value.accountant, owner: p.value.storage.owner)
        }
    }

    public var stateTensors: [Tensor] { buffers.compactMap { $0 } }

    /// Stops optimising the parameters `drop` selects and frees their state (ops removed for good).
    public func remove(where drop: (Parameter) -> Bool) {
        let keep = parameters.indices.filter { !drop(parameters[$0]) }
        parameters = keep.map { parameters[$0] }
        buffers = keep.map { buffers[$0] }
    }

    public func step() {
        stepCount += 1
        for (i, p) in parameters.enumerated() {
            guard let g = p.grad, !p.value.isVirtual else { continue }
            let x = p.value.ptr, gp = g.ptr, n = p.count
            let wd = p.decay ? weightDecay : 0, lr = learningRate, m = momentum
            if let buf = buffers[i]?.ptr {
                for j in 0..<n {
                    let d = gp[j] + wd * x[j]
                    buf[j] = m * buf[j] + d
                    x[j] -= lr * buf[j]
                }
            } else {
                for j in 0..<n { x[j] -= lr * (gp[j] + wd * x[j]) }
            }
        }
    }
}

/// Adam with L2 weight decay added to the gradient (PyTorch `Adam(weight_decay=…)`).
public final class Adam: Optimizer {
    public let parameters: [Parameter]
    public var learningRate: Float
    public let beta1: Float, beta2: Float, eps: Float
    public let weightDecay: Float
    public var stepCount = 0
    private let m: [Tensor], v: [Tensor]

    public init(parameters: [Parameter], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999,
                eps: Float = 1e-8, weightDecay: Float = 0) throws {
        self.parameters = parameters
        self.learningRate = learningRate
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps
        self.weightDecay = weightDecay
        for p in parameters { try p.ensureGrad() }
        m = try parameters.map { try Tensor.zeros($0.shape, category: .optimizerState, accountant: $0.value.accountant, owner: $0.value.storage.owner) }
        v = try parameters.map { try Tensor.zeros($0.shape, category: .optimizerState, accountant: $0.value.accountant, owner: $0.value.storage.owner) }
    }

    public var stateTensors: [Tensor] { m + v }

    public func step() {
        stepCount += 1
        let t = Float(stepCount)
        let bc1 = 1 - pow(beta1, t), bc2 = 1 - pow(beta2, t)
        for (i, p) in parameters.enumerated() {
            guard let g = p.grad, !p.value.isVirtual else { continue }
            let x = p.value.ptr, gp = g.ptr, mp = m[i].ptr, vp = v[i].ptr
            let wd = p.decay ? weightDecay : 0
            let (b1, b2, lr, e) = (beta1, beta2, learningRate, eps)
            for j in 0..<p.count {
                let d = gp[j] + wd * x[j]
                mp[j] = b1 * mp[j] + (1 - b1) * d
                vp[j] = b2 * vp[j] + (1 - b2) * d * d
                x[j] -= lr * (mp[j] / bc1) / ((vp[j] / bc2).squareRoot() + e)
            }
        }
    }
}

/// Scales all gradients so their joint L2 norm is at most `maxNorm`. Returns the norm before clipping.
@discardableResult
public func clipGradNorm(_ parameters: [Parameter], maxNorm: Float) -> Float {
    var total: Double = 0
    for p in parameters { if let g = p.grad, !g.isVirtual { total += Kernels.sumSquares(g.ptr, count: g.count) } }
    let norm = Float(total.squareRoot())
    let coef = maxNorm / (norm + 1e-6)
    if coef < 1 {
        for p in parameters { if let g = p.grad, !g.isVirtual { Kernels.scale(g.ptr, coef, g.ptr, count: g.count) } }
    }
    return norm
}

/// lr(e) = min + (max − min)·(1 + cos(π·e/T))/2, as `CosineAnnealingLR` stepped once per epoch.
public struct CosineSchedule: Sendable, Codable, Equatable {
    public var maxLR: Float, minLR: Float, totalEpochs: Int
    public init(maxLR: Float, minLR: Float, totalEpochs: Int) {
        self.maxLR = maxLR; self.minLR = minLR; self.totalEpochs = max(1, totalEpochs)
    }
    public func learningRate(epoch: Int) -> Float { learningRate(progress: Double(epoch)) }
    /// The same curve at a fractional epoch (annealing per step rather than per epoch).
    public func learningRate(progress: Double) -> Float {
        minLR + (maxLR - minLR) * Float(1 + cos(Double.pi * min(progress, Double(totalEpochs)) / Double(totalEpochs))) / 2
    }
}
