// Test support shared by every test target: finite-difference gradient checks, random tensors,
// closeness assertions. Finite differences:
// loss = Σ r ⊙ f(inputs) for a fixed random r, so every output element matters; central
// differences in float32 with a step that suits float32, compared with a mixed tolerance.

import EspalierCore
import XCTest

public struct GradCheck {
    public var eps: Float = 1e-2
    public var rtol: Float = 2e-2
    public var atol: Float = 2e-3

    public init(eps: Float = 1e-2, rtol: Float = 2e-2, atol: Float = 2e-3) { self.eps = eps; self.rtol = rtol; self.atol = atol }

    /// Checks d(Σ r·f)/d(input) for every input in `inputs` (tensors that f reads through `vars`).
    /// `f` builds the output from variables made by `graph.leaf` of each input.
    public func check(_ name: String, inputs: [Tensor], seed: UInt64 = 7, file: StaticString = #filePath, line: UInt = #line,
               _ f: (Graph, [Variable]) throws -> Variable) throws {
        let acc = inputs[0].accountant
        // Analytic gradients.
        let graph = Graph(accountant: acc, seed: seed)
        let vars = inputs.map { graph.leaf($0) }
        let out = try f(graph, vars)
        var rng = RNG(seed: 99)
        let r = try Tensor(shape: out.shape, category: .workspace, accountant: acc)
        r.fillUniform(bound: 1, rng: &rng)
        try graph.backward(out, gradient: try r.copy())
        let analytic = vars.map { graph.gradient(of: $0)?.array ?? Array(repeating: 0, count: $0.value.count) }

        func lossAt() throws -> Double {
            let g = Graph(accountant: acc, seed: seed)
            let y = try g.noGrad { try f(g, inputs.map { g.constant($0) }) }
            var s: Double = 0
            for i in 0..<y.value.count { s += Double(y.value[i]) * Double(r[i]) }
            return s
        }
        for (k, x) in inputs.enumerated() {
            var worst: Float = 0
            for i in 0..<x.count {
                let old = x[i]
                x[i] = old + eps; let lp = try lossAt()
                x[i] = old - eps; let lm = try lossAt()
                x[i] = old
                let numeric = Float((lp - lm) / Double(2 * eps))
                let a = analytic[k][i]
                let err = abs(a - numeric)
                worst = max(worst, err / (atol + rtol * max(abs(a), abs(numeric))))
                if err > atol + rtol * max(abs(a), abs(numeric)) {
                    XCTFail("\(name): input \(k) element \(i): analytic \(a) vs numeric \(numeric)", file: file, line: line)
                    return
                }
            }
        }
    }
}

/// Random tensor helper for tests.
public func randomTensor(_ shape: [Int], _ acc: MemoryAccountant, seed: UInt64, bound: Float = 1) throws -> Tensor {
    var rng = RNG(seed: seed)
    let t = try Tensor(shape: shape, category: .data, accountant: acc)
    t.fillUniform(bound: bound, rng: &rng)
    return t
}

/// A parameter of random values whose gradient buffer exists, as an optimiser's does: a backward
/// adds into it in place.
public func parameterWithGradient(_ name: String, _ shape: [Int], _ acc: MemoryAccountant, seed: UInt64) throws -> Parameter {
    let p = Parameter(name: name, value: try randomTensor(shape, acc, seed: seed))
    try p.ensureGrad()
    return p
}

public func assertClose(_ a: [Float], _ b: [Float], tol: Float = 1e-4, _ msg: String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "count \(msg)", file: file, line: line)
    for i in 0..<min(a.count, b.count) {
        let scale = max(1, abs(a[i]), abs(b[i]))
        if abs(a[i] - b[i]) > tol * scale {
            XCTFail("\(msg) element \(i): \(a[i]) vs \(b[i])", file: file, line: line)
            return
        }
    }
}

/// d(Σ r·f)/dθ for a parameter θ that `f` reads through the graph (`g.param(θ)`): the gradient
/// the backward pass leaves in θ.grad against central differences of θ's values.
public func checkParameterGradient(_ name: String, parameter: Parameter, acc: MemoryAccountant,
                                   file: StaticString = #filePath, line: UInt = #line,
                                   _ f: (Graph) throws -> Variable) throws {
    var rng = RNG(seed: 5)
    let g0 = Graph(accountant: acc)
    let y0 = try f(g0)
    let r = try Tensor(shape: y0.shape, category: .workspace, accountant: acc)
    r.fillUniform(bound: 1, rng: &rng)
    parameter.zeroGrad()
    try g0.backward(y0, gradient: try r.copy())
    let analytic = parameter.grad!.array
    func loss() throws -> Double {
        let g = Graph(accountant: acc)
        let y = try g.noGrad { try f(g) }
        return (0..<y.value.count).reduce(0.0) { $0 + Double(y.value[$1]) * Double(r[$1]) }
    }
    let eps: Float = 1e-2
    for i in 0..<parameter.count {
        let old = parameter.value[i]
        parameter.value[i] = old + eps; let lp = try loss()
        parameter.value[i] = old - eps; let lm = try loss()
        parameter.value[i] = old
        let numeric = Float((lp - lm) / Double(2 * eps))
        XCTAssertEqual(analytic[i], numeric, accuracy: 2e-3 + 2e-2 * max(abs(numeric), abs(analytic[i])), "\(name)[\(i)]", file: file, line: line)
    }
}
