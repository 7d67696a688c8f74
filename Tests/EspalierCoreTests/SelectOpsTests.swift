// The small ops the search space uses on parameter vectors: gather (merged ops' share of an
// edge's weights), segment softmax (PC-DARTS's β̃ per node) and an external scalar term (a plugin
// regularizer's value and gradient joining the graph), each against finite differences.

import EspalierCore
import EspalierTestSupport
import XCTest

final class SelectOpsTests: XCTestCase {
    func testGather_PicksEntriesAndScatterAddsGradients() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 3], acc, seed: 1, bound: 1)
        let g = Graph(accountant: acc)
        let y = try g.gather(g.constant(x), indices: [4, 0, 4])
        XCTAssertEqual(y.value.array, [x[4], x[0], x[4]])
        try GradCheck().check("gather", inputs: [x]) { g, v in try g.gather(v[0], indices: [4, 0, 4, 5]) }
        XCTAssertThrowsError(try g.gather(g.constant(x), indices: [6]))
    }

    func testSegmentSoftmax_SumsToOnePerSegment_AndMatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([9], acc, seed: 2, bound: 2)
        let segments = [0..<2, 2..<5, 5..<9]
        let g = Graph(accountant: acc)
        let y = try g.segmentSoftmax(g.constant(x), segments: segments)
        for s in segments {
            XCTAssertEqual(s.reduce(Float(0)) { $0 + y.value[$1] }, 1, accuracy: 1e-6)
            let m = s.map { x[$0] }.max()!, z = s.reduce(Float(0)) { $0 + exp(x[$1] - m) }
            for i in s { XCTAssertEqual(y.value[i], exp(x[i] - m) / z, accuracy: 1e-6) }
        }
        try GradCheck().check("segmentSoftmax", inputs: [x]) { g, v in
            try g.weightedSum([try g.segmentSoftmax(v[0], segments: segments)], weights: try g.constant(Tensor.from([1.5], shape: [1], accountant: acc)))
        }
        XCTAssertThrowsError(try g.segmentSoftmax(g.constant(x), segments: [0..<4]), "segments must tile the vector")
    }

    func testExternalTerm_ValueAndGradientsFlowIntoItsInputs() throws {
        let acc = MemoryAccountant()
        let a = try randomTensor([2, 2], acc, seed: 3, bound: 1), b = try randomTensor([3], acc, seed: 4, bound: 1)
        // R = Σ a² + 3·Σ b computed outside; its gradient handed in.
        let ga = try Tensor.from(a.array.map { 2 * $0 }, shape: [2, 2], accountant: acc)
        let gb = try Tensor.from([3, 3, 3], shape: [3], accountant: acc)
        let value = a.array.reduce(0) { $0 + $1 * $1 } + 3 * b.array.reduce(0, +)
        let g = Graph(accountant: acc)
        let va = g.leaf(a), vb = g.leaf(b)
        let t = try g.externalTerm(value: value, inputs: [va, vb], grads: [ga, gb])
        XCTAssertEqual(t.value[0], value)
        try g.backward(try g.scale(t, by: 2))
        XCTAssertEqual(g.gradient(of: va)?.array, ga.array.map { 2 * $0 })
        XCTAssertEqual(g.gradient(of: vb)?.array, [6, 6, 6])
    }
}

final class PartialMixTests: XCTestCase {
    func testPartialMix_EqualsNarrowPoolConcatShuffle_AndMatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        for (stride, k) in [(1, 4), (2, 4), (2, 2), (1, 1)] {
            let n = 2, c = 8, h = 6, w = 4
            let ho = stride == 2 ? h / 2 : h, wo = stride == 2 ? w / 2 : w
            // Well-separated values, so the finite differences never cross a max-pool tie.
            var rng = RNG(seed: UInt64(stride * 10 + k))
            var values = (0..<(n * c * h * w)).map { Float($0) * 0.05 - 9 }
            for i in Swift.stride(from: values.count - 1, to: 0, by: -1) { values.swapAt(i, rng.int(i + 1)) }
            let x = try Tensor.from(values, shape: [n, c, h, w], accountant: acc)
            let head = try randomTensor([n, c / k, ho, wo], acc, seed: 3, bound: 1)
            let g = Graph(accountant: acc)
            // One edge alone, unweighted: the edge's output itself.
            func edge(_ g: Graph, _ head: Variable, _ x: Variable) throws -> Variable {
                try g.partialNode(heads: [head], xs: [x], strides: [stride], groups: k, weights: nil, indices: [])
            }
            let y = try edge(g, g.constant(head), g.constant(x))
            var ref = [Float](repeating: 0, count: n * c * ho * wo)
            ref.withUnsafeMutableBufferPointer { Kernels.partialMixNaive(head: head.ptr, x: x.ptr, out: $0.baseAddress!, n: n, c: c, k: k, h: h, w: w, stride: stride) }
            XCTAssertEqual(y.value.array, ref, "stride \(stride) K \(k)")
            // The composition of the separate graph ops gives the same.
            if k > 1 {
                let rest = try g.narrow(g.constant(x), channels: (c / k)..<c)
                let bypass = stride == 2 ? try g.maxPool2d(rest, kernel: 2, stride: 2) : rest
                XCTAssertEqual(try g.channelShuffle(try g.concatChannels([g.constant(head), bypass]), groups: k).value.array, ref)
            }
            try GradCheck().check("partialMix s\(stride) K\(k)", inputs: [head, x]) { g, v in
                try edge(g, v[0], v[1])
            }
        }
    }
}

extension PartialMixTests {
    func testPartialNode_EqualsTheWeightedSumOfPartialMixes_AndMatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let n = 2, c = 8, k = 4
        // Two stride-2 edges from 6×4 inputs and one stride-1 edge from a 3×2 input.
        let xs = try [([n, c, 6, 4], 2), ([n, c, 6, 4], 2), ([n, c, 3, 2], 1)].enumerated().map { i, spec -> (Tensor, Int) in
            var rng = RNG(seed: UInt64(40 + i))
            var values = (0..<spec.0.reduce(1, *)).map { Float($0) * 0.05 - 4 }
            for j in Swift.stride(from: values.count - 1, to: 0, by: -1) { values.swapAt(j, rng.int(j + 1)) }
            return (try Tensor.from(values, shape: spec.0, accountant: acc), spec.1)
        }
        let heads = try (0..<3).map { try randomTensor([n, c / k, 3, 2], acc, seed: UInt64(50 + $0), bound: 1) }
        let w = try Tensor.from([0.2, 0.7, -0.4, 1.1], shape: [4], accountant: acc)
        let indices = [3, 0, 1]
        let g = Graph(accountant: acc)
        let node = try g.partialNode(heads: heads.map { g.constant($0) }, xs: xs.map { g.constant($0.0) }, strides: xs.map(\.1), groups: k,
                                     weights: g.constant(w), indices: indices)
        let mixes = try (0..<3).map {
            try g.partialNode(heads: [g.constant(heads[$0])], xs: [g.constant(xs[$0].0)], strides: [xs[$0].1], groups: k, weights: nil, indices: [])
        }
        let ref = try g.weightedSum(mixes, weights: g.constant(w), indices: indices)
        for (a, b) in zip(node.value.array, ref.value.array) { XCTAssertEqual(a, b, accuracy: 1e-6) }
        try GradCheck().check("partialNode", inputs: heads + xs.map(\.0) + [w]) { g, v in
            try g.partialNode(heads: Array(v[0..<3]), xs: Array(v[3..<6]), strides: xs.map(\.1), groups: k, weights: v[6], indices: indices)
        }
        try GradCheck().check("partialNode, plain sum", inputs: heads + xs.map(\.0)) { g, v in
            try g.partialNode(heads: Array(v[0..<3]), xs: Array(v[3..<6]), strides: xs.map(\.1), groups: k, weights: nil, indices: [])
        }
    }
}
