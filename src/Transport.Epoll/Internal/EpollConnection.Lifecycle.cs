namespace Transport.Epoll.Internal;

/// <summary>
/// A connection's lifecycle: one small state machine per direction, and the fd's close when both are done. Only the
/// loop's thread changes a state (a flushing thread inside its gate only reads them; see
/// <c>EpollConnection.FlushingThreadSender.cs</c>).
/// <code>
/// Receive side (ReceiveState)
///   from        event                                                          to
///   Reading     a flush leaves the input pipe over MaxReadBufferSize           Paused
///   Paused      the application consumed enough (the flush completes)         Reading
///   Reading,    peer FIN; the application completed its input; DisposeAsync;  Done
///   Paused      a reset, socket error, abort, idle timeout, loop stop or bug
///
/// Send side (SendState)
///   from                         event                                             to
///   Sending                      the kernel took part of a write (or EAGAIN)       AwaitingWritable
///   AwaitingWritable             EPOLLOUT                                          Sending
///   Sending                      zero-copy bytes held reach MaxWriteBufferSize     AwaitingZeroCopyRoom
///   AwaitingZeroCopyRoom         a completion releases held bytes                  Sending
///   Sending                      output completed, all sent, FIN sent,             AwaitingZeroCopyCompletions
///                                zero-copy sends not completed
///   AwaitingZeroCopyCompletions  the last completion                               Done
///   Sending                      output completed, all sent, FIN sent              Done
///   any                          a reset, socket error, abort (the zero-copy       Done
///                                drain running out is one), idle timeout, loop
///                                stop or bug
///
/// The connection
///   Open     both sides Done (the later of "the peer's FIN / the application's end of input" and "our FIN")  Closed
///   Open     a reset, socket error, abort, idle timeout, loop stop or bug: both sides made Done at once          Closed
/// </code>
/// Closed is final and is the fd's field holding -1 (other threads read it with a volatile read): the table forgot the
/// id and the fd was closed, so late work for the connection sees it and never reaches the fd's next owner.
/// Readiness the loop remembers between edges (readable, a FIN queued, a read queued for the next turn) and whether a
/// pipe read is pending are not states of the lifecycle: they say what to do next within one.
/// </summary>
internal sealed partial class EpollConnection
{
    private ReceiveState _receiveState;
    private SendState _sendState;

    private enum ReceiveState
    {
        /// <summary>Reads when the socket is readable.</summary>
        Reading,

        /// <summary>The input pipe is full: the kernel's receive window pushes back on the peer until the application reads.</summary>
        Paused,

        /// <summary>Nothing more is read: the input pipe's writer is completed.</summary>
        Done,
    }

    private enum SendState
    {
        /// <summary>Reads the output pipe and sends; a file job in flight is driven from here too.</summary>
        Sending,

        /// <summary>The kernel's send buffer is full: EPOLLOUT resumes (registered once, edge-triggered).</summary>
        AwaitingWritable,

        /// <summary>Bytes held for zero-copy completions are at their budget: a completion resumes.</summary>
        AwaitingZeroCopyRoom,

        /// <summary>FIN is sent; the output pipe completes when the kernel completed every zero-copy send (bounded).</summary>
        AwaitingZeroCopyCompletions,

        /// <summary>Nothing more is sent: the output pipe's reader is completed (or will be, after a zero-copy grace).</summary>
        Done,
    }

    private bool InputDone => _receiveState == ReceiveState.Done;

    private bool SendDone => _sendState == SendState.Done;
}
