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
        for (stride, k, w) in [(1, 4, 4), (2, 4, 4), (2, 2, 4), (1, 1, 4), (2, 4, 37)] {   // 37: 18 windows a row, two blocks of 8 and a tail
            let n = 2, c = 8, h = 6
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

extension PartialMixTests {
    /// The edges of one node at stride 1 and 2 (odd inputs at stride 2: the 2×2 pool drops the
    /// last row and column), K 1–4, weights 1 and others.
    private func edges(n: Int, c: Int, k: Int, ho: Int, wo: Int, _ acc: MemoryAccountant, seed: UInt64) throws -> [(head: Tensor, x: Tensor, stride: Int, scale: Float)] {
        try [(2, 2 * ho, 2 * wo, Float(1)), (1, ho, wo, 0.7), (2, 2 * ho + 1, 2 * wo + 1, -0.4)].enumerated().map { e, spec in
            (try randomTensor([n, c / k, ho, wo], acc, seed: seed + UInt64(e), bound: 1),
             try randomTensor([n, c, spec.1, spec.2], acc, seed: seed + 10 + UInt64(e), bound: 2), spec.0, spec.3)
        }
    }

    /// A node's edges summed in one pass, each output plane taking all its edges while it is in
    /// the cache, give the floats of one edge at a time over the whole output, bit for bit.
    func testPartialMixSum_IsTheEdgeByEdgeSum_BitForBit() throws {
        let acc = MemoryAccountant()
        for (t, (n, c, ho, wo)) in [(2, 8, 3, 2), (1, 12, 5, 7), (3, 4, 4, 9)].enumerated() {
            for k in [1, 2, 4] where c % k == 0 {
                let es = try edges(n: n, c: c, k: k, ho: ho, wo: wo, acc, seed: UInt64(100 * t + k))
                let kernelEdges = es.map { Kernels.PartialEdge(head: $0.head.ptr, x: $0.x.ptr, h: $0.x.shape[2], w: $0.x.shape[3], stride: $0.stride, scale: $0.scale) }
                withExtendedLifetime(es) {   // the edges hold only the tensors' pointers
                    for count in 1...kernelEdges.count {
                        var fast = [Float](repeating: 7, count: n * c * ho * wo), ref = fast
                        Kernels.partialMixSum(Array(kernelEdges.prefix(count)), out: &fast, n: n, c: c, k: k, ho: ho, wo: wo)
                        Kernels.partialMixSumNaive(Array(kernelEdges.prefix(count)), out: &ref, n: n, c: c, k: k, ho: ho, wo: wo)
                        XCTAssertEqual(fast.map(\.bitPattern), ref.map(\.bitPattern), "\(count) edges, N \(n) C \(c) K \(k) \(ho)×\(wo)")
                    }
                }
            }
        }
    }

    /// With an addend, each edge's dX is added into it as it is stored, into another tensor and in
    /// place: the floats of the plain backward followed by `Kernels.add` (a zero's sign aside: the
    /// head channels keep the addend's own), and dHead as without one.
    func testPartialMixBackward_AddsIntoTheAddend_AsAnAddPass() throws {
        let acc = MemoryAccountant()
        for (t, (n, c, ho, wo)) in [(2, 8, 3, 2), (1, 12, 5, 7), (1, 4, 2, 17)].enumerated() {
            for k in [2, 4] where c % k == 0 {
                for edge in try edges(n: n, c: c, k: k, ho: ho, wo: wo, acc, seed: UInt64(300 + 10 * t + k)) {
                    let (h, w) = (edge.x.shape[2], edge.x.shape[3]), count = n * c * h * w
                    let dOut = try randomTensor([n, c, ho, wo], acc, seed: UInt64(500 + t), bound: 1)
                    let addend = try randomTensor([n, c, h, w], acc, seed: UInt64(600 + t), bound: 1)
                    func backward(_ dX: UnsafeMutablePointer<Float>, _ add: UnsafePointer<Float>?, _ dHead: UnsafeMutablePointer<Float>) {
                        Kernels.partialMixBackward(dOut: dOut.ptr, x: edge.x.ptr, dHead: dHead, dX: dX, addend: add, n: n, c: c, k: k,
                                                   h: h, w: w, stride: edge.stride, scale: edge.scale)
                    }
                    var plain = [Float](repeating: 7, count: count), head = [Float](repeating: 7, count: n * (c / k) * ho * wo)
                    backward(&plain, nil, &head)
                    var expected = [Float](repeating: 0, count: count)
                    Kernels.add(addend.ptr, plain, &expected, count: count)
                    var other = [Float](repeating: 7, count: count), otherHead = head.map { _ in Float(7) }
                    backward(&other, addend.ptr, &otherHead)
                    XCTAssertEqual(other, expected, "into another tensor, stride \(edge.stride) K \(k) \(h)×\(w)")
                    XCTAssertEqual(otherHead.map(\.bitPattern), head.map(\.bitPattern), "dHead with an addend")
                    var inPlace = addend.array
                    inPlace.withUnsafeMutableBufferPointer { p in backward(p.baseAddress!, p.baseAddress!, &otherHead) }
                    XCTAssertEqual(inPlace, expected, "in place, stride \(edge.stride) K \(k) \(h)×\(w)")
                }
            }
        }
    }

    /// An input on two edges of one node takes both gradients, the second added into the first's
    /// as it is stored: against finite differences, at stride 1 and 2.
    func testPartialNode_InputOnTwoEdges_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let n = 2, c = 8, k = 4
        for stride in [1, 2] {
            let (h, w) = stride == 2 ? (6, 4) : (3, 2)
            var rng = RNG(seed: UInt64(70 + stride))
            var values = (0..<(n * c * h * w)).map { Float($0) * 0.05 - 3 }
            for j in Swift.stride(from: values.count - 1, to: 0, by: -1) { values.swapAt(j, rng.int(j + 1)) }
            let x = try Tensor.from(values, shape: [n, c, h, w], accountant: acc)
            let heads = try (0..<2).map { try randomTensor([n, c / k, 3, 2], acc, seed: UInt64(80 + $0), bound: 1) }
            let wts = try Tensor.from([0.3, -0.6], shape: [2], accountant: acc)
            try GradCheck().check("partialNode, x on two edges, stride \(stride)", inputs: heads + [x, wts]) { g, v in
                try g.partialNode(heads: [v[0], v[1]], xs: [v[2], v[2]], strides: [stride, stride], groups: k, weights: v[3], indices: [0, 1])
            }
        }
    }
}
