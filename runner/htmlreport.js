// The HTML report's charts (runner/htmlreport.py inlines this file): each chart drawn from the page's
// embedded data as inline SVG, then marked data-drawn; any error lands in #js-errors for the browser test.
(function(){
var errs=document.getElementById('js-errors');
window.onerror=function(m,s,l){errs.textContent+=m+' (line '+l+')\n';document.body.dataset.errors='1';};
var D=JSON.parse(document.getElementById('report-data').textContent),T=D.timeline,B=T.bins;
var NS='http://www.w3.org/2000/svg',W=480,H=200,L=44,R=10,TP=10,BT=28;
function el(n,a,p){var e=document.createElementNS(NS,n);for(var k in a)e.setAttribute(k,a[k]);if(p)p.appendChild(e);return e;}
function txt(s,a,p){var t=el('text',a,p);t.textContent=s;return t;}
function frame(fig,ymax,xl){var s=el('svg',{viewBox:'0 0 '+W+' '+H,width:'100%',role:'img'},fig);
 el('line',{x1:L,y1:H-BT,x2:W-R,y2:H-BT,stroke:'#999'},s);el('line',{x1:L,y1:TP,x2:L,y2:H-BT,stroke:'#999'},s);
 txt(fmt(ymax),{x:L-4,y:TP+8,'text-anchor':'end'},s);txt('0',{x:L-4,y:H-BT,'text-anchor':'end'},s);
 txt(xl,{x:(L+W-R)/2,y:H-6,'text-anchor':'middle'},s);return s;}
function fmt(v){return v>=100?Math.round(v).toString():(+v.toPrecision(3)).toString();}
function ys(v,m){return H-BT-(m>0?v/m:0)*(H-BT-TP);}
function legend(fig,names,cols){var d=document.createElement('div');d.className='legend';
 names.forEach(function(n,i){var s=document.createElement('span');s.style.color=cols[i];s.textContent='\u25A0 '+n;d.appendChild(s);});fig.appendChild(d);}
function bars(fig,vals,col,xl){var m=Math.max.apply(null,vals.concat([0]));var s=frame(fig,m,xl);var n=vals.length||1,w=(W-L-R)/n;
 vals.forEach(function(v,i){var y=ys(v,m);el('rect',{x:L+i*w+0.5,y:y,width:Math.max(w-1,0.5),height:H-BT-y,fill:col},s);});return s;}
function lines(fig,series,cols,names,xl){var all=[0];series.forEach(function(a){a.forEach(function(v){if(v!=null)all.push(v);});});
 var m=Math.max.apply(null,all),s=frame(fig,m,xl),n=B.length||1,w=(W-L-R)/n;
 series.forEach(function(a,k){var d='';a.forEach(function(v,i){if(v==null)return;d+=(d?'L':'M')+(L+(i+0.5)*w).toFixed(1)+' '+ys(v,m).toFixed(1);});
  if(d)el('path',{d:d,fill:'none',stroke:cols[k],'stroke-width':1.5},s);});legend(fig,names,cols);return s;}
var per=T.width>0?1/T.width:0,span=(T.width*B.length).toFixed(1)+' s of the run';
var draw={
 throughput:function(f){bars(f,B.map(function(b){return (b.completed+b.failed)*per;}),'#3a7bd5',span);},
 latency:function(f){lines(f,['p50','p95','p99'].map(function(q){return B.map(function(b){return b.latency[q]==null?null:b.latency[q];});}),['#2a9d8f','#e9c46a','#e76f51'],['p50','p95','p99'],span);},
 attempts:function(f){lines(f,[B.map(function(b){return b.attempts*per;}),B.map(function(b){return b.retried*per;}),B.map(function(b){return b.rate_limited*per;})],['#3a7bd5','#e9c46a','#e76f51'],['attempts','retries','429s'],span);},
 histogram:function(f){var e=T.latency_edges,lab=e.map(function(x){return '<'+x+'s';}).concat(['\u2265'+e[e.length-1]+'s']);
  var s=bars(f,T.histogram,'#2a9d8f','latency (s), requests per bucket'),w=(W-L-R)/lab.length;
  lab.forEach(function(t,i){txt(t.replace('s',''),{x:L+(i+0.5)*w,y:H-BT+11,'text-anchor':'middle'},s);});}
};
document.querySelectorAll('figure.chart').forEach(function(f){draw[f.dataset.chart](f);f.dataset.drawn='1';});
document.body.dataset.ready='1';
document.body.dataset.drawnMs=Math.round(performance.now()).toString();  // since navigation start
})();
