// Channel ops: concat, narrow/split, shuffle and the strided zero op — kernels against the
// naive references, gradients against finite differences, and PyTorch's channel orders.

import EspalierCore
import EspalierTestSupport
import XCTest

final class ChannelTests: XCTestCase {
    func testChannelKernels_MatchNaiveReference() throws {
        let acc = MemoryAccountant()
        // The second case is large enough to split the samples across cores.
        for (k, (n, hw)) in [(3, 5), (8, 32 * 32)].enumerated() {
            let channels = [2, 5, 3]
            let total = channels.reduce(0, +)
            let xs = try channels.enumerated().map { try randomTensor([n, $0.element, hw], acc, seed: UInt64(10 * k + $0.offset)) }
            let y1 = try Tensor(shape: [n, total, hw], category: .data, accountant: acc)
            let y2 = try Tensor(shape: [n, total, hw], category: .data, accountant: acc)
            Kernels.concatChannels(xs.map { UnsafePointer($0.ptr) }, channels: channels, out: y1.ptr, n: n, hw: hw)
            Kernels.concatChannelsNaive(xs.map { UnsafePointer($0.ptr) }, channels: channels, out: y2.ptr, n: n, hw: hw)
            XCTAssertEqual(y1.array, y2.array, "concat n=\(n) hw=\(hw)")

            let outs1 = try channels.map { try Tensor(shape: [n, $0, hw], category: .data, accountant: acc) }
            let outs2 = try channels.map { try Tensor(shape: [n, $0, hw], category: .data, accountant: acc) }
            Kernels.splitChannels(y1.ptr, channels: channels, outs: [outs1[0].ptr, nil, outs1[2].ptr], n: n, hw: hw)
            Kernels.splitChannelsNaive(y1.ptr, channels: channels, outs: [outs2[0].ptr, nil, outs2[2].ptr], n: n, hw: hw)
            XCTAssertEqual(outs1[0].array, outs2[0].array)
            XCTAssertEqual(outs1[2].array, outs2[2].array)
            XCTAssertEqual(outs1[2].array, xs[2].array, "split inverts concat")

            let nar1 = try Tensor(shape: [n, 4, hw], category: .data, accountant: acc)
            let nar2 = try Tensor(shape: [n, 4, hw], category: .data, accountant: acc)
            Kernels.copyChannels(from: y1.ptr, srcChannels: total, srcOffset: 3, to: nar1.ptr, dstChannels: 4, dstOffset: 0, channels: 4, n: n, hw: hw)
            Kernels.copyChannelsNaive(from: y1.ptr, srcChannels: total, srcOffset: 3, to: nar2.ptr, dstChannels: 4, dstOffset: 0, channels: 4, n: n, hw: hw)
            XCTAssertEqual(nar1.array, nar2.array, "copyChannels")

            let dX1 = try Tensor.filled([n, total, hw], value: 3, category: .data, accountant: acc)   // overwritten
            let dX2 = try Tensor(shape: [n, total, hw], category: .data, accountant: acc)
            Kernels.narrowChannelsBackward(nar1.ptr, dX: dX1.ptr, c: total, offset: 3, channels: 4, n: n, hw: hw)
            Kernels.narrowChannelsBackwardNaive(nar1.ptr, dX: dX2.ptr, c: total, offset: 3, channels: 4, n: n, hw: hw)
            XCTAssertEqual(dX1.array, dX2.array, "narrow backward")
            // Added into a gradient so far: from another tensor (copied outside the range), and in place.
            let before = try randomTensor([n, total, hw], acc, seed: UInt64(40 + k))
            let dX3 = try Tensor.filled([n, total, hw], value: 3, category: .data, accountant: acc)
            Kernels.narrowChannelsBackward(nar1.ptr, dX: dX3.ptr, addend: before.ptr, c: total, offset: 3, channels: 4, n: n, hw: hw)
            Kernels.narrowChannelsBackwardNaive(nar1.ptr, dX: dX2.ptr, addend: before.ptr, c: total, offset: 3, channels: 4, n: n, hw: hw)
            XCTAssertEqual(dX3.array, dX2.array, "narrow backward into a gradient so far")
            Kernels.narrowChannelsBackward(nar1.ptr, dX: before.ptr, addend: before.ptr, c: total, offset: 3, channels: 4, n: n, hw: hw)
            XCTAssertEqual(before.array, dX2.array, "narrow backward in place")

            for groups in [2, 5] {
                let s1 = try Tensor(shape: [n, total, hw], category: .data, accountant: acc)
                let s2 = try Tensor(shape: [n, total, hw], category: .data, accountant: acc)
                Kernels.channelShuffle(y1.ptr, s1.ptr, n: n, c: total, hw: hw, groups: groups)
                Kernels.channelShuffleNaive(y1.ptr, s2.ptr, n: n, c: total, hw: hw, groups: groups)
                XCTAssertEqual(s1.array, s2.array, "shuffle groups=\(groups)")
            }
        }
    }

    func testConcat_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let a = try randomTensor([2, 1, 3, 3], acc, seed: 1)
        let b = try randomTensor([2, 3, 3, 3], acc, seed: 2)
        let c = try randomTensor([2, 2, 3, 3], acc, seed: 3)
        try GradCheck().check("concat", inputs: [a, b, c]) { graph, v in try graph.concatChannels(v) }
        // The same input twice gets both slices' gradients.
        try GradCheck().check("concat repeated", inputs: [a, b]) { graph, v in try graph.concatChannels([v[0], v[1], v[0]]) }
        let graph = Graph(accountant: acc)
        let y = try graph.concatChannels([graph.constant(a), graph.constant(b)])
        XCTAssertEqual(y.shape, [2, 4, 3, 3])
        XCTAssertEqual(Array(y.value.array[9..<18]), Array(b.array[0..<9]), "sample 0, channel 1 is b's channel 0")
    }

    func testSplit_UnusedPieceGetsZeroGradient_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 6, 2, 3], acc, seed: 4)
        // Piece 1 is dropped: its channels must get exactly zero gradient.
        try GradCheck().check("split, middle piece unused", inputs: [x]) { graph, v in
            let p = try graph.splitChannels(v[0], sizes: [2, 3, 1])
            return try graph.concatChannels([p[2], p[0]])
        }
        // A piece used twice, another once (through a ReLU).
        try GradCheck().check("split, piece used twice", inputs: [x]) { graph, v in
            let p = try graph.splitChannels(v[0], sizes: [3, 3])
            return try graph.add(try graph.add(p[0], p[0]), try graph.scale(p[1], by: -2))
        }
        let graph = Graph(accountant: acc)
        let xv = graph.leaf(x)
        let p = try graph.splitChannels(xv, sizes: [2, 3, 1])
        XCTAssertEqual(p.map { $0.shape }, [[2, 2, 2, 3], [2, 3, 2, 3], [2, 1, 2, 3]])
        XCTAssertEqual(Array(p[1].value.array[0..<6]), Array(x.array[12..<18]))
        try graph.backward(p[2], gradient: try Tensor.filled(p[2].shape, value: 1, category: .data, accountant: acc))
        let dX = try XCTUnwrap(graph.gradient(of: xv))
        for s in 0..<2 {
            for ch in 0..<6 {
                for i in 0..<6 { XCTAssertEqual(dX[(s * 6 + ch) * 6 + i], ch == 5 ? 1 : 0) }
            }
        }
    }

    func testChannelShuffle_PermutesChannelsAsPyTorch() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        // One value per channel: the output lists which input channel each output channel holds.
        let x = graph.constant(try Tensor.from((0..<12).map(Float.init), shape: [2, 6, 1, 1], accountant: acc))
        // x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W)
        XCTAssertEqual(try graph.channelShuffle(x, groups: 2).value.array, [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])
        XCTAssertEqual(try graph.channelShuffle(x, groups: 3).value.array, [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11])
        XCTAssertThrowsError(try graph.channelShuffle(x, groups: 4))
    }

    func testChannelShuffle_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 6, 2, 3], acc, seed: 9)
        for groups in [2, 3] {
            try GradCheck().check("shuffle g=\(groups)", inputs: [x]) { graph, v in try graph.channelShuffle(v[0], groups: groups) }
        }
    }

    func testNarrow_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([3, 5, 3, 2], acc, seed: 12)
        for range in [0..<2, 1..<4, 4..<5] {
            try GradCheck().check("narrow \(range)", inputs: [x]) { graph, v in try graph.narrow(v[0], channels: range) }
        }
        let x2 = try randomTensor([4, 6], acc, seed: 13)   // (N, C)
        try GradCheck().check("narrow rank 2", inputs: [x2]) { graph, v in try graph.narrow(v[0], channels: 2..<5) }
        // x read by two narrows (overlapping) and a scale, in either order: each adds where it is made.
        for scaleFirst in [false, true] {
            try GradCheck().check("narrow twice and a scale, scale first: \(scaleFirst)", inputs: [x]) { graph, v in
                let early = scaleFirst ? try graph.scale(v[0], by: 0.5) : nil
                let a = try graph.narrow(v[0], channels: 0..<3), b = try graph.narrow(v[0], channels: 2..<5)
                let c = try early ?? graph.scale(v[0], by: 0.5)
                return try graph.add(try graph.add(a, try graph.scale(b, by: 2)), try graph.narrow(c, channels: 1..<4))
            }
        }
    }

    /// A narrow's backward into a gradient x already holds as its own writes nothing of x's size:
    /// it adds dY into the narrowed channels in place. Before, it wrote a zeroed dX of x's size
    /// and added that.
    func testNarrow_AddsIntoTheGradientSoFar_WithoutAGradientOfXsSize() throws {
        let acc = MemoryAccountant()
        let shape = [4, 16, 12, 12], size = shape.reduce(1, *) * MemoryLayout<Float>.size
        let g = Graph(accountant: acc)
        let p = try parameterWithGradient("x", shape, acc, seed: 1)
        let y = try g.narrow(g.param(p), channels: 4..<8)
        let dY = try randomTensor(y.shape, acc, seed: 2)
        let gradBefore = p.grad!.array
        acc.resetPeak()
        let before = acc.currentTotal
        try g.backward(y, gradient: dY)
        XCTAssertLessThan(acc.peakTotal - before, size / 4, "backward took \(acc.peakTotal - before) bytes more at its peak; x is \(size) bytes")
        let after = p.grad!.array, inner = 12 * 12
        for s in 0..<4 { for ch in 0..<16 { for i in 0..<inner {
            let j = (s * 16 + ch) * inner + i
            let expected = (4..<8).contains(ch) ? gradBefore[j] + dY[(s * 4 + ch - 4) * inner + i] : gradBefore[j]
            XCTAssertEqual(after[j], expected, "sample \(s) channel \(ch)")
        } } }
    }

    func testZeroOp_StrideTwo_HasCeilShapeAndNoGradient() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = graph.leaf(try randomTensor([2, 3, 5, 6], acc, seed: 1))
        let z1 = try graph.zeros(like: x)
        XCTAssertEqual(z1.shape, [2, 3, 5, 6])
        let z2 = try graph.zeros(like: x, stride: 2)
        XCTAssertEqual(z2.shape, [2, 3, 3, 3])
        XCTAssertFalse(z2.requiresGrad)
        XCTAssertTrue(z2.value.array.allSatisfy { $0 == 0 })
    }

    func testChannelOps_BadArguments_AreErrorsNotCrashes() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let a = graph.constant(try Tensor.zeros([2, 3, 4, 4], category: .data, accountant: acc))
        let b = graph.constant(try Tensor.zeros([2, 3, 4, 5], category: .data, accountant: acc))
        XCTAssertThrowsError(try graph.concatChannels([a, b]))
        XCTAssertThrowsError(try graph.concatChannels([]))
        XCTAssertThrowsError(try graph.narrow(a, channels: 2..<4))
        XCTAssertThrowsError(try graph.splitChannels(a, sizes: [1, 1]))
        XCTAssertThrowsError(try graph.zeros(like: a, stride: 0))
    }

    func testChannelScale_MatchesFiniteDifferencesAndPlainLoops() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 3, 2, 3], acc, seed: 21)
        let w = try Tensor.from([0.5, -1.5, 2], shape: [3], accountant: acc)
        try GradCheck().check("channelScale", inputs: [x, w]) { g, v in try g.channelScale(v[0], v[1]) }
        let y = try Tensor(shape: x.shape, category: .data, accountant: acc)
        Kernels.channelScaleForward(x.ptr, w.ptr, y.ptr, n: 2, c: 3, hw: 6)
        for i in 0..<x.count { XCTAssertEqual(y[i], x[i] * w[(i / 6) % 3]) }
    }

    func testCrop_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 2, 5, 4], acc, seed: 22)
        try GradCheck().check("crop", inputs: [x]) { g, v in try g.crop(v[0], top: 1, left: 1) }
        try GradCheck().check("crop window", inputs: [x]) { g, v in try g.crop(v[0], top: 2, left: 0, height: 2, width: 3) }
        let g = Graph(accountant: acc)
        let y = try g.crop(g.constant(x), top: 1, left: 1)
        XCTAssertEqual(y.shape, [2, 2, 4, 3])
        XCTAssertEqual(y.value[0], x[5])   // (0,0,1,1)
        XCTAssertThrowsError(try g.crop(g.constant(x), top: 5, left: 0))
    }
}
