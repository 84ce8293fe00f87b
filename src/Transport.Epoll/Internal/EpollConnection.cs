using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using Transport.Epoll.Interop;

namespace Transport.Epoll.Internal;

/// <summary>
/// One connected socket (accepted, or opened by <see cref="EpollConnectionFactory"/>), owned by one loop for its whole life. The loop's thread does all of its syscalls: reads into
/// the input pipe (<c>EpollConnection.Receive.cs</c>), writes from the output pipe (<c>EpollConnection.Send.cs</c>),
/// and the close (<c>EpollConnection.Close.cs</c>); its states are in <c>EpollConnection.Lifecycle.cs</c>. Calls from other threads (Abort, DisposeAsync) are handed to
/// the loop; they carry this object, whose fd is -1 once closed, so late work never reaches the fd's next owner.
/// </summary>
internal sealed partial class EpollConnection : ConnectionContext, IEpollHandler, IDuplexPipe
{
    /// <summary>Registered once for the connection's life, edge-triggered: backpressure and partial writes then need no
    /// epoll_ctl at all (readiness is remembered in flags, see <see cref="OnEvents"/>).</summary>
    public const uint ConnectionEvents = Libc.EPOLLIN | Libc.EPOLLOUT | Libc.EPOLLRDHUP | Libc.EPOLLET;

    private readonly TransportContext _context;
    private readonly ILogger _logger;
    private readonly Pipe _input;
    private readonly Pipe _output;
    private int _fd;
    private IDuplexPipe _transport;
    private string? _connectionId;
    private IDictionary<object, object?>? _items;
    private long _lastActivity;

    public EpollConnection(int fd, EpollLoop loop, EndPoint? localEndPoint, EndPoint? remoteEndPoint, EpollConnectionDirection direction)
    {
        _fd = fd;
        Loop = loop;
        Direction = direction;
        // The clock now, not the loop's turn start (Now): a connection set up at the end of a long turn (a starved
        // core) must not look idle for that turn's length at the next idle scan.
        _lastActivity = Environment.TickCount64;
        _context = loop.Context;
        _logger = _context.Logger;
        LocalEndPoint = localEndPoint;
        RemoteEndPoint = remoteEndPoint;
        MemoryPool = loop.MemoryPool;
        EpollTransportOptions options = _context.Options;
        if (options.ZeroCopyThreshold is > 0 and int threshold)
        {
            _zeroCopy = new ZeroCopySender(this, threshold);
        }
        else if (options.SendOnFlushingThread)
        {
            // Zero-copy's state is the loop's alone, so flushing threads send only on connections without it.
            _flushingThread = new FlushingThreadSender(this);
        }

        _input = new Pipe(loop.InputPipeOptions);

        // Output: the application writes, the loop reads. Scheduling the reader on the loop is what defers sends
        // to the end of the loop's turn, so responses produced together leave in one writev. A flush from another
        // thread sends right there when it can (FlushingThreadSender): that scheduler is the connection's own, so
        // unlike the input's these options cannot be shared by the loop's connections.
        long maxWrite = _context.MaxWriteBufferSize;
        _output = new Pipe(new PipeOptions(
            MemoryPool,
            readerScheduler: _flushingThread ?? (PipeScheduler)loop,
            writerScheduler: _context.ApplicationScheduler,
            pauseWriterThreshold: maxWrite,
            resumeWriterThreshold: maxWrite / 2,
            useSynchronizationContext: false));

        // The connection is its own original duplex pipe: one object less per connection (idle connections count).
        _transport = this;
        _onOutputReadable = OnOutputReadable;
    }

    public ulong Id { get; set; }

    /// <summary>Accepted on an endpoint, or opened by the connection factory: everything else is the same.</summary>
    public EpollConnectionDirection Direction { get; }

    /// <summary>Links in the owning loop's list of connections (see EpollLoop.Connections.cs).</summary>
    public EpollConnection? NextOnLoop { get; set; }

    public EpollConnection? PreviousOnLoop { get; set; }

    /// <summary>When the last successful read or write happened, in the loop's <see cref="EpollLoop.Now"/> clock.</summary>
    public long LastActivity => _lastActivity;

    public EpollLoop Loop { get; }

    public MemoryPool<byte> MemoryPool { get; }

    public int FileDescriptor => Volatile.Read(ref _fd);

    public int LoopIndex => Loop.Index;

    public override string ConnectionId
    {
        get => _connectionId ??= Id.ToString("X16", System.Globalization.CultureInfo.InvariantCulture);
        set => _connectionId = value;
    }

    public override IFeatureCollection Features => this;

    public override IDictionary<object, object?> Items
    {
        get => _items ??= new ConnectionItems();
        set => _items = value;
    }

    public override IDuplexPipe Transport
    {
        get => _transport;
        set
        {
            _transport = value;
            if (!ReferenceEquals(value, this) && _byId is not null)
            {
                RevokeAddressing("its Transport was replaced");
            }
        }
    }

    public override EndPoint? LocalEndPoint { get; set; }

    public override EndPoint? RemoteEndPoint { get; set; }

    /// <summary>The transport's own pipe ends, whatever middleware put in <see cref="Transport"/> since.</summary>
    private IDuplexPipe OriginalTransport => this;

    PipeReader IDuplexPipe.Input => _input.Reader;

    PipeWriter IDuplexPipe.Output => _output.Writer;

    /// <summary>Starts the send side; the receive side starts with the first EPOLLIN.</summary>
    public void Start()
    {
        Loop.AddConnection(this);
        ReadOutput();
    }

    public void OnEvents(uint events)
    {
        if (_fd < 0)
        {
            return;
        }

        if ((events & Libc.EPOLLERR) != 0 && _zeroCopy is { Used: true })
        {
            events = _zeroCopy.HandleErrorQueue(events);
            if (_fd < 0)
            {
                return;
            }
        }

        // Edge-triggered: each bit says something changed since we last looked. Readiness is remembered in flags
        // and acted on when the receive or send side is able to (not paused by backpressure).
        if ((events & (Libc.EPOLLIN | Libc.EPOLLRDHUP | Libc.EPOLLHUP | Libc.EPOLLERR)) != 0)
        {
            _readable = true;
            if ((events & (Libc.EPOLLRDHUP | Libc.EPOLLHUP | Libc.EPOLLERR)) != 0)
            {
                // The FIN (or an error) is already queued behind the data: no new edge will announce it, so this
                // time the socket is read until read() says so.
                _finOrErrorPending = true;
            }

            if (CanReceive)
            {
                Receive();
            }
            else if ((events & Libc.EPOLLERR) != 0)
            {
                // Not reading now (backpressure, or input done), so a read will not report the error: fetch it.
                CheckPendingSocketError();
            }
        }

        if ((events & Libc.EPOLLOUT) != 0 && _fd >= 0)
        {
            OnWritable();
        }
    }

    private void OnWritable()
    {
        _files?.OnWritable();
        if (_sendState == SendState.AwaitingWritable && _fd >= 0)
        {
            _sendState = SendState.Sending;
            PrepareWritableForById();
            ReadOutputAfterStop();
        }
    }
}
