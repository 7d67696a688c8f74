// Layers with parameters: Conv2d, BatchNorm2d, Linear, and how parameters are made (named by
// the accountant's owner path, initialised as PyTorch does by default). A module is a plain
// class that lists its parameters and applies graph ops in `callAsFunction`.
// Not here: the search space (later), containers with magic reflection.

import Foundation

public protocol Module: AnyObject {
    /// Every learnable parameter, in a stable order (checkpoints rely on it).
    var parameters: [Parameter] { get }
    /// Persistent non-learnable state (batch-norm running statistics), in a stable order.
    var buffers: [Tensor] { get }
}

extension Module {
    public var buffers: [Tensor] { [] }
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }
}

/// How a new parameter is filled.
public enum ParameterInit {
    case zeros, ones
    case normal(std: Float)
    /// U(−1/√fanIn, 1/√fanIn): PyTorch's default for conv and linear weights (kaiming_uniform, a=√5).
    case uniformFanIn(Int)
}

/// Makes parameters under the accountant's current owner path, from one RNG stream.
public final class ParameterFactory {
    public let accountant: MemoryAccountant
    public var rng: RNG

    public init(accountant: MemoryAccountant, seed: UInt64) {
        self.accountant = accountant
        self.rng = RNG(seed: seed)
    }

    public func make(_ name: String, _ shape: [Int], _ initializer: ParameterInit, decay: Bool = true) throws -> Parameter {
        let path = accountant.currentOwnerPath.isEmpty ? name : accountant.currentOwnerPath + "/" + name
        let t = try Tensor(shape: shape, category: .parameters, accountant: accountant, owner: accountant.owner(path))
        switch initializer {
        case .zeros: t.fill(0)
        case .ones: t.fill(1)
        case .normal(let std): t.fillNormal(std: std, rng: &rng)
        case .uniformFanIn(let fanIn): t.fillUniform(bound: 1 / Float(max(fanIn, 1)).squareRoot(), rng: &rng)
        }
        // Dry-run parameters consume the same random numbers, so a later real run is unaffected.
        if t.isVirtual {
            switch initializer {
            case .normal, .uniformFanIn: for _ in 0..<t.count { _ = rng.next() }
            default: break
            }
        }
        return Parameter(name: path, value: t, decay: decay)
    }

    /// Runs `body` with parameters and allocations under `<current>/<name>`.
    public func scope<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        try accountant.withOwner(name, body)
    }
}

/// conv2d without bias: weight (Cout, Cin/groups, KH, KW).
public final class Conv2d: Module {
    public let weight: Parameter
    public let stride, padding, dilation, groups: Int
    public let owner: Int32

    public init(_ f: ParameterFactory, name: String, cIn: Int, cOut: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, dilation: Int = 1, groups: Int = 1) throws {
        guard cIn % groups == 0, cOut % groups == 0 else {
            throw EspalierError.invalidArgument("\(name): channels \(cIn)→\(cOut) not divisible by groups \(groups)")
        }
        self.stride = stride; self.padding = padding; self.dilation = dilation; self.groups = groups
        (weight, owner) = try f.scope(name) {
            (try f.make("weight", [cOut, cIn / groups, kernel, kernel], .uniformFanIn(cIn / groups * kernel * kernel)),
             f.accountant.currentOwner)
        }
    }

    public var parameters: [Parameter] { [weight] }

    /// With `window`: the convolution of that crop of x, read in place (Graph.conv2d). With
    /// `reluInput`: of relu(x) (Graph.conv2d), which is computed in the caller's owner scope when
    /// the kernels cannot take it.
    public func callAsFunction(_ g: Graph, _ x: Variable, window: ConvWindow? = nil, reluInput: Bool = false) throws -> Variable {
        // Not 4-D: conv2d names the problem.
        let folded = reluInput && (ConvGeometry(input: x.shape, weight: weight.value.shape, stride: stride, padding: padding,
                                                dilation: dilation, groups: groups, window: window).map(g.readsReLUInside) ?? true)
        let input = reluInput && !folded ? try g.relu(x) : x
        return try g.accountant.withOwnerID(owner) {
            try g.conv2d(input, g.param(weight), stride: stride, padding: padding, dilation: dilation, groups: groups,
                         reluInput: folded, window: window)
        }
    }
}

